"""The README's validation tables, generated from the results tables (never copied by hand).

Each generated block of ``README.md`` sits between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->``; :func:`update_readme` rewrites the blocks it knows from the
results in ``results_dir`` and leaves the rest of the file alone. The pipeline calls it after
the report when it writes to the repository's own folders, and ``tests`` check that the
committed README equals what the committed results generate.

Blocks
------
``six-methods``
    The calibration and power experiments (``calibration_type1.csv``, ``power_summary.csv``):
    pooled type-I error at α = 0.05 (Σ rejections / Σ tests) with the range over settings, and
    TPR / observed FDR at BH 0.05 (pooled counts), then the generated comparison with the
    published findings (:func:`validation.report.compare_with_literature`).
``scenarios``
    The realistic scenarios (``scenario_null_type1.csv``, ``scenario_power_summary.csv``): per
    method and scenario, the number of settings in which the method is calibrated
    (:func:`validation.scenario_report.setting_verdicts`) and the mean TPR at matched observed
    FDR 0.05.
``scenarios-full``
    The same table from the committed full run of the scenario stages (``validation/full/``,
    written by ``python -m validation --full --only scenario_null --only scenario_power --out
    validation/full``), headed by its revision and run time; whatever results a run writes,
    this block reads the committed full results.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from validation import summaries
from validation.provenance import REPO_ROOT
from validation.scenario_report import power_by_method, scenario_verdicts, setting_verdicts
from validation.summaries import method_label, percent

README = REPO_ROOT / "README.md"
#: the committed full run of the scenario stages
FULL_DIR = REPO_ROOT / "validation" / "full"


def six_methods_block(results_dir: Path) -> list[str]:
    """The ``six-methods`` block (the module docstring)."""
    from validation.report import compare_with_literature

    t1 = summaries.load(results_dir, "calibration_type1.csv")
    ps = summaries.load(results_dir, "power_summary.csv")
    if t1 is None:
        return ["*No calibration results: run `python -m validation`.*"]
    pooled = summaries.type1_by_method(t1)
    p5 = pooled[np.isclose(pooled["alpha"], 0.05)].set_index("method")
    pw = summaries.power_by_method(ps, 0.05).set_index("method") if ps is not None else None
    lines = [
        "| method | type-I error at α = 0.05, pooled (range over settings) "
        "| TPR / observed FDR at BH 0.05 |",
        "|---|---|---|",
    ]
    for m, r in p5.iterrows():
        power = "–"
        if pw is not None and m in pw.index:
            power = f"{percent(pw.loc[m, 'tpr'], '–')} / {percent(pw.loc[m, 'observed_fdr'], '–')}"
        lines.append(
            f"| {method_label(m)} | {percent(r['rate'], '–')} ({percent(r['min_rate'], '–')}–"
            f"{percent(r['max_rate'], '–')}) | {power} |"
        )
    return lines + [""] + compare_with_literature(results_dir)


def scenarios_block(results_dir: Path) -> list[str]:
    """The ``scenarios`` block (the module docstring)."""
    type1 = summaries.load(results_dir, "scenario_null_type1.csv")
    if type1 is None:
        return ["*No scenario results: run `python -m validation`.*"]
    cal = scenario_verdicts(setting_verdicts(type1))
    power = power_by_method(summaries.load(results_dir, "scenario_power_summary.csv"))
    tpr = {(r.scenario, r.method): r.tpr for r in power.itertuples()}
    scenarios = list(dict.fromkeys(cal["scenario"]))
    lines = [
        "| method | " + " | ".join(f"`{s}`" for s in scenarios) + " |",
        "|---" * (len(scenarios) + 1) + "|",
    ]
    for m in dict.fromkeys(cal["method"]):
        cells = []
        for s in scenarios:
            r = cal[(cal["scenario"] == s) & (cal["method"] == m)]
            if r.empty:
                cells.append("–")
                continue
            r = r.iloc[0]
            mark = "✓" if r["calibrated"] else "✗"
            k = int(r["n_settings"])
            cell = f"{mark} {int(r['n_calibrated'])}/{k}"
            if int(r["n_calibrated_corrected"]) != int(r["n_calibrated"]):
                cell += f" ({int(r['n_calibrated_corrected'])}/{k} corrected)"
            if (s, m) in tpr:
                cell += f", TPR {percent(float(tpr[(s, m)]), '–')}"
            cells.append(cell)
        lines.append(f"| {method_label(m)} | " + " | ".join(cells) + " |")
    return lines + [
        "",
        "Each cell: calibrated (✓) in every setting or not (✗), the number of settings in "
        "which the method is calibrated (plain rule: Wilson 95% interval of the type-I "
        "error reaching down to α at 0.05 and 0.01, tail counts at 10⁻³ and 10⁻⁴ not above "
        "their Poisson 99% interval), in brackets where it differs the number after correcting "
        "for the k settings and for the correlation within a data set (the rule is stated in "
        "the report), and the mean TPR at matched observed FDR 5% where the power experiment "
        "ran the scenario.",
    ]


def scenarios_full_block(_results_dir: Path) -> list[str]:
    """The ``scenarios-full`` block (the module docstring)."""
    import json

    results = FULL_DIR / "results"
    metas = [results / f"{name}.meta.json" for name in ("scenario_null", "scenario_power")]
    if not all(m.exists() for m in metas):
        return ["*No full run committed: `python -m validation --full --only scenario_null "
                "--only scenario_power --out validation/full`.*"]  # fmt: skip
    meta = [json.loads(m.read_text()) for m in metas]
    if any(m.get("variant") != "full" for m in meta):
        return [f"*`{FULL_DIR.name}/results` does not hold a run of the full variant.*"]
    revs = sorted({m["git_rev"] for m in meta})
    dirty = any(r.endswith("dirty") for r in revs)
    tree = "tree with uncommitted changes" if dirty else "clean tree"
    head = (
        f"Full variant, run from the {tree} at `{', '.join(revs)}`: calibration "
        f"{meta[0]['seconds'] / 60:.0f} min and power {meta[1]['seconds'] / 60:.0f} min with "
        f"{meta[0]['workers']} workers on {meta[0]['cpu_count']} cores; report "
        "[`validation/full/REPORT.md`](validation/full/REPORT.md)."
    )
    return [head, ""] + scenarios_block(results)


BLOCKS = {
    "six-methods": six_methods_block,
    "scenarios": scenarios_block,
    "scenarios-full": scenarios_full_block,
}


def render(text: str, results_dir: Path) -> str:
    """``text`` with every known generated block rewritten from ``results_dir``."""
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", flags=re.S
        )
        if pattern.search(text):
            body = "\n".join(make(Path(results_dir))) + "\n"
            text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
    return text


def update_readme(results_dir: Path, readme: Path = README) -> Path:
    """Rewrite the generated blocks of ``readme`` from ``results_dir``; returns its path."""
    readme = Path(readme)
    old = readme.read_text()
    new = render(old, results_dir)
    if new != old:
        readme.write_text(new)
    return readme


if __name__ == "__main__":
    print(update_readme(REPO_ROOT / "validation" / "results"))
