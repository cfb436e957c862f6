"""``paper/tables/*.tex``: LaTeX (booktabs) tables of the supplement, from the results tables.

One file per table: ``type1.tex`` (pooled type-I error per method), ``power.tex`` (TPR,
observed FDR and ROC AUC at BH 0.05), ``agreement.tex`` (max and median relative
differences) and ``runtime.tex`` (speed-ups at the largest common data set). A table whose
results are missing is not written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from validation import summaries

_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "−": "--",
    "×": r"$\times$",
    "σ": r"$\sigma$",
    "²": r"$^2$",
}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (and a few Unicode symbols mapped)."""
    return "".join(_SPECIALS.get(c, c) for c in str(text))


def _label(method: str) -> str:
    from figures.style import method_label

    return tex_escape(method_label(method))


def _tabular(path: Path, caption: str, header: list[str], rows: list[list[str]]) -> Path:
    cols = "l" + "r" * (len(header) - 1)
    body = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{tab:{path.stem}}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    body += [" & ".join(r) + r" \\" for r in rows]
    body += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    path.write_text("\n".join(body))
    return path


def _pct(x) -> str:
    return "--" if x is None or not np.isfinite(x) else f"{100 * x:.1f}\\%"


def _sci(x) -> str:
    if x is None or not np.isfinite(x):
        return "--"
    if x == 0:
        return "0"
    m, e = f"{x:.1e}".split("e")
    return f"${m}\\times 10^{{{int(e)}}}$"


def make(results_dir: Path, tables_dir: Path) -> list[Path]:
    """Write every table whose results exist; returns the paths written."""
    tables_dir = Path(tables_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    out = []
    t1 = summaries.load(results_dir, "calibration_type1.csv")
    if t1 is not None:
        pooled = summaries.type1_by_method(t1)
        rows = []
        for m in pooled["method"].unique():
            d = pooled[pooled["method"] == m].set_index("alpha")
            cells = [_label(m)]
            for a in (0.05, 0.01):
                r = d.loc[a] if a in d.index else None
                cells += (
                    ["--", "--"]
                    if r is None
                    else [_pct(r["rate"]), f"{_pct(r['min_rate'])}--{_pct(r['max_rate'])}"]
                )
            rows.append(cells)
        out.append(
            _tabular(
                tables_dir / "type1.tex",
                "Type-I error on null data, pooled over all settings, and its range over settings.",
                ["Method", r"$\alpha=0.05$", "range", r"$\alpha=0.01$", "range"],
                rows,
            )
        )
    ps = summaries.load(results_dir, "power_summary.csv")
    if ps is not None:
        pw = summaries.power_by_method(ps, 0.05)
        rows = [
            [_label(r["method"]), _pct(r["tpr"]), _pct(r["observed_fdr"]), f"{r['auc']:.3f}"]
            for _, r in pw.iterrows()
        ]
        out.append(
            _tabular(
                tables_dir / "power.tex",
                "Power at BH 0.05, pooled over effect sizes, scopes and designs.",
                ["Method", "TPR", "observed FDR", "ROC AUC"],
                rows,
            )
        )
    ag = summaries.load(results_dir, "agreement_summary.csv")
    if ag is not None:
        q = summaries.agreement_by_quantity(ag)
        rows = [
            [
                tex_escape(r["comparison"]),
                tex_escape(r["quantity"]),
                str(int(r["n_values"])),
                _sci(r["max_rel_diff"]),
                _sci(r["median_rel_diff"]),
            ]
            for _, r in q.iterrows()
        ]
        out.append(
            _tabular(
                tables_dir / "agreement.tex",
                "Relative differences from the reference implementations.",
                ["Comparison", "quantity", "values", "max", "median"],
                rows,
            )
        )
    rt = summaries.load(results_dir, "runtime.csv")
    if rt is not None:
        sp_ = summaries.largest_point_speedups(summaries.speedups(rt))
        rows = [
            [
                tex_escape(f"{r['what']} vs {r['anchor']}"),
                f"{int(r['n_cells']):,}",
                f"{int(r['n_genes']):,}",
                f"{r['ours_s']:.3g}",
                f"{r['anchor_s']:.3g}",
                f"{r['ratio']:.0f}",
            ]
            for _, r in sp_.iterrows()
        ]
        out.append(
            _tabular(
                tables_dir / "runtime.tex",
                "Speed-up of pyflashmm at the largest data set each anchor ran "
                "on (seconds, same run).",
                [
                    "Comparison",
                    "cells",
                    "genes",
                    "pyflashmm (s)",
                    "anchor (s)",
                    r"speed-up ($\times$)",
                ],
                rows,
            )
        )
    return out
