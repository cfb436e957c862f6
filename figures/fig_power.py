"""Power against the effect size, one column per (scope, subjects, cells per subject) setting.

Rows: TPR of DE genes at BH 0.05, the observed FDR at BH 0.05 (dashed line: nominal 0.05;
missing where a method made no discovery) and the ROC AUC of the p-values (dashed line: 0.5,
chance). x is the absolute simulated effect |β| on the natural-log scale of the mean count,
drawn on a log axis.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["power_summary.csv"]
OUTPUTS = ["fig_power"]

_SETTING = ["scope", "n_subjects", "cells_per_subject"]
_ROWS = [
    ("tpr", "TPR at BH 0.05", 0.0),
    ("observed_fdr", "observed FDR at BH 0.05\n(square-root scale)", 0.05),
    ("auc", "ROC AUC", 0.5),
]


def _settings(df) -> list:
    order = {s: i for i, s in enumerate(style.SCOPE_LABELS)}
    keys = df.groupby(_SETTING).groups
    return sorted(keys, key=lambda k: (order.get(k[0], len(order)), k[0], k[1], k[2]))


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw ``fig_power`` from ``power_summary.csv`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    df = df[np.isclose(df["threshold"], 0.05)]
    methods = style.methods_in(df)
    settings = _settings(df)
    nc = max(len(settings), 1)
    fig, axes = plt.subplots(len(_ROWS), nc, figsize=(2.5 * nc + 0.5, 6.6), squeeze=False,
                             sharex=True, layout="constrained")  # fmt: skip
    handles: dict = {}
    betas = sorted(df["abs_beta"].unique())
    for c, key in enumerate(settings):
        sub = df[(df["scope"] == key[0]) & (df["n_subjects"] == key[1])
                 & (df["cells_per_subject"] == key[2])]  # fmt: skip
        for r, (col, label, ref) in enumerate(_ROWS):
            ax = axes[r, c]
            if ref:
                ax.axhline(ref, color=style.REFERENCE_COLOR, lw=0.8, ls="--")
            for i, m in enumerate(methods):
                d = sub[sub["method"] == m].sort_values("abs_beta")
                (h,) = ax.plot(d["abs_beta"], d[col], color=style.method_color(m),
                               marker=style.MARKERS[i % 8], ms=3.5, lw=1)  # fmt: skip
                handles.setdefault(m, h)
            ax.set_xscale("log")
            ax.set_xticks(betas, [f"{b:g}" for b in betas])
            ax.minorticks_off()
            if col == "observed_fdr":
                style.sqrt_axis(ax, "y")
                ax.set_ylim(0, 1)
            elif col == "tpr":
                ax.set_ylim(-0.02, 1.02)
            if r == 0:
                scope = style.SCOPE_LABELS.get(key[0], key[0])
                ax.set_title(f"{scope}\n{key[1]:g} subjects, {key[2]:g} cells per subject")
            if r == len(_ROWS) - 1:
                ax.set_xlabel("|β| (natural-log scale)")
            if c == 0:
                ax.set_ylabel(label)
    if not settings:
        for ax in axes[:, 0]:
            style.empty_panel(ax, "no power results")
    style.method_legend(fig, handles, methods, ncol=2 if nc == 1 else 3)
    return style.save(fig, figures_dir, OUTPUTS[0])
