"""iCOBRA-style FDR–TPR curves: observed TPR against observed FDR over all cutoffs.

One panel per (scope, donors, cells per donor) row and effect size |β| column, methods
overlaid. Points mark the BH thresholds 0.01, 0.05 and 0.1 (dashed vertical guides; the
0.01 and 0.1 guides have no tick label): filled when the observed FDR is at most the nominal level,
hollow otherwise; a threshold with fewer than 10 discoveries (TP + FP) has no point (its
observed FDR is a ratio of a handful of calls; ``fig_power`` gives those counts). Rows are
(scope, donors, cells per donor) settings (donors are the ``n_subjects`` of the tables); the
FDR axis is square-root scaled.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from figures import style
from figures.tables import read_table

INPUTS = ["power_curves.csv.gz", "power_summary.csv"]
OUTPUTS = ["fig_fdr_tpr"]

_SETTING = ["scope", "n_subjects", "cells_per_subject"]
_GUIDES = (0.01, 0.05, 0.1)
#: a BH point is drawn only from at least this many discoveries (as in ``fig_power``)
MIN_DISCOVERIES = 10


def _select(df, key, beta):
    return df[(df["scope"] == key[0]) & (df["n_subjects"] == key[1])
              & (df["cells_per_subject"] == key[2]) & (df["abs_beta"] == beta)]  # fmt: skip


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw ``fig_fdr_tpr`` from ``power_curves.csv.gz`` and ``power_summary.csv`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    curves = read_table(Path(results_dir) / INPUTS[0])
    summary = read_table(Path(results_dir) / INPUTS[1])
    methods = style.methods_in(summary)
    order = {s: i for i, s in enumerate(style.SCOPE_LABELS)}
    rows = sorted(summary.groupby(_SETTING).groups,
                  key=lambda k: (order.get(k[0], len(order)), k[0], k[1], k[2]))  # fmt: skip
    cols = sorted(summary["abs_beta"].unique())
    nr, nc = max(len(rows), 1), max(len(cols), 1)
    fig, axes = style.panel_grid(lambda r, c: True, nr, nc,
                                 width=min(2.2, (style.PAGE_WIDTH - 0.9) / nc), height=1.55,
                                 sharex=True, sharey=True)  # fmt: skip
    handles: dict = {}
    for r, key in enumerate(rows):
        for c, beta in enumerate(cols):
            ax = axes[r, c]
            cur, summ = _select(curves, key, beta), _select(summary, key, beta)
            for g in _GUIDES:
                ax.axvline(g, color="0.6", lw=0.7, ls="--")
            for m in methods:
                kw = style.method_style(m, ms=3.5)
                d = cur[cur["method"] == m]
                if not d.empty:
                    ax.plot(d["fdr"], d["tpr"], **(kw | {"marker": "none"}))
                    handles.setdefault(m, style.method_handle(m))
                s = summ[(summ["method"] == m) & (summ["tp"] + summ["fp"] >= MIN_DISCOVERIES)]
                ok = (s["observed_fdr"] <= s["threshold"]).to_numpy()
                pts = kw | {"ls": "none", "zorder": 3, "mew": 0.9}
                ax.plot(s["observed_fdr"][ok], s["tpr"][ok], **(pts | {"mfc": kw["color"]}))
                ax.plot(s["observed_fdr"][~ok], s["tpr"][~ok], **(pts | {"mfc": "white"}))
            style.sqrt_axis(ax, "x", ticks=(0, 0.05, 0.25, 0.5, 1))
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.02)
            if r == 0:
                ax.set_title(f"|β| = {beta:g}")
            if c == 0:
                ax.set_ylabel("observed TPR")
        scope = style.SCOPE_LABELS.get(key[0], key[0])
        axes[r, 0].annotate(f"{scope}\n{key[1]:g} donors,\n{key[2]:g} {style.CELLS_LABEL}",
                            xy=(0, 0.5), xycoords="axes fraction", xytext=(-36, 0),
                            textcoords="offset points", rotation=90, ha="right", va="center",
                            fontsize=7, fontweight="bold", multialignment="center")  # fmt: skip
    if not rows:
        style.empty_panel(axes[0, 0], "no power results")
    else:
        style.panel_letters(axes)
        fig.supxlabel("observed FDR (square-root scale)", fontsize=7.5)
    filled = plt.Line2D([], [], ls="none", marker="o", color="0.3", ms=4)
    hollow = plt.Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=4)
    style.method_legend(fig, handles, methods,
                        ((filled, "BH 0.01/0.05/0.1: FDR controlled"),
                         (hollow, "BH 0.01/0.05/0.1: FDR exceeded")),
                        ncol=3, title=f"BH points from ≥ {MIN_DISCOVERIES} discoveries only; "
                        "replicates pooled")  # fmt: skip
    return style.save(fig, figures_dir, OUTPUTS[0])
