"""iCOBRA-style FDR–TPR curves: observed TPR against observed FDR over all cutoffs.

One panel per (scope, subjects, cells per subject) row and effect size |β| column, methods
overlaid. Points mark the BH thresholds 0.01, 0.05 and 0.1 (dashed vertical guides; the
0.01 guide has no tick label): filled when the observed FDR is at most the nominal level,
hollow otherwise; a threshold with no discovery has no observed FDR and no point. The FDR
axis is square-root scaled.
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
    fig, axes = plt.subplots(nr, nc, figsize=(2.4 * nc + 0.5, 2.3 * nr + 1.0), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")  # fmt: skip
    handles: dict = {}
    for r, key in enumerate(rows):
        for c, beta in enumerate(cols):
            ax = axes[r, c]
            cur, summ = _select(curves, key, beta), _select(summary, key, beta)
            for g in _GUIDES:
                ax.axvline(g, color="0.6", lw=0.7, ls="--")
            for m in methods:
                color = style.method_color(m)
                d = cur[cur["method"] == m]
                if not d.empty:
                    (h,) = ax.plot(d["fdr"], d["tpr"], color=color, lw=1)
                    handles.setdefault(m, h)
                s = summ[(summ["method"] == m) & summ["observed_fdr"].notna()]
                ok = s["observed_fdr"] <= s["threshold"]
                ax.scatter(s.loc[ok, "observed_fdr"], s.loc[ok, "tpr"], s=16, color=color,
                           zorder=3)  # fmt: skip
                ax.scatter(s.loc[~ok, "observed_fdr"], s.loc[~ok, "tpr"], s=16,
                           facecolors="white", edgecolors=color, zorder=3)  # fmt: skip
            style.sqrt_axis(ax, "x", ticks=(0, 0.05, 0.1, 0.25, 0.5, 1))
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.02)
            scope = style.SCOPE_LABELS.get(key[0], key[0])
            ax.set_title(f"{scope}, |β| = {beta:g}\n{key[1]:g} subjects, "
                         f"{key[2]:g} cells per subject")  # fmt: skip
            if r == nr - 1:
                ax.set_xlabel("observed FDR (square-root scale)")
            if c == 0:
                ax.set_ylabel("observed TPR")
    if not rows:
        style.empty_panel(axes[0, 0], "no power results")
    filled = plt.Line2D([], [], ls="none", marker="o", color="0.3", ms=4)
    hollow = plt.Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=4)
    style.method_legend(fig, handles, methods,
                        ((filled, "BH 0.01/0.05/0.1: FDR controlled"),
                         (hollow, "BH 0.01/0.05/0.1: FDR exceeded")),
                        ncol=2 if nc == 1 else 4)  # fmt: skip
    return style.save(fig, figures_dir, OUTPUTS[0])
