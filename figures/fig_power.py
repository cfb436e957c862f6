"""Power against the effect size: one row per (scope, donors, cells per donor) setting.

Columns, all at BH 0.05 (replicates pooled, as ``power_summary.csv`` gives them):

a. TPR (TP of the DE genes) with its Wilson 95% interval;
b. the number of discoveries: all (TP + FP, filled markers, solid line) and false (FP, open
   markers, dotted line), on a symmetric-log axis (linear below 1) so that 0 shows;
c. the observed FDR (FP of the discoveries) with its Wilson 95% interval, drawn only where a
   method made at least :data:`MIN_DISCOVERIES` discoveries (a ratio of a handful of
   discoveries is not shown: panel b gives those counts); dashed line: 0.05;
d. the ROC AUC of the p-values (dashed line: 0.5, chance).

x is the absolute simulated effect |β| on the natural-log scale of the mean count, on a log
axis; methods are dodged slightly along it. Donors are the ``n_subjects`` of the table.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["power_summary.csv"]
OUTPUTS = ["fig_power"]

#: the observed FDR is drawn only from at least this many discoveries
MIN_DISCOVERIES = 10

_SETTING = ["scope", "n_subjects", "cells_per_subject"]
_COLS = ("tpr", "discoveries", "fdr", "auc")
_TITLES = {
    "tpr": "TPR",
    "discoveries": "discoveries",
    "fdr": "observed FDR",
    "auc": "ROC AUC",
}
_YLABELS = {
    "tpr": "TPR (Wilson 95%)",
    "discoveries": "genes called",
    "fdr": f"FDR (≥ {MIN_DISCOVERIES} calls)",
    "auc": "AUC",
}


def _settings(df) -> list:
    order = {s: i for i, s in enumerate(style.SCOPE_LABELS)}
    keys = df.groupby(_SETTING).groups
    return sorted(keys, key=lambda k: (order.get(k[0], len(order)), k[0], k[1], k[2]))


def _draw(ax, col, d, x, m) -> None:
    kw = style.method_style(m)
    tp, fp, n_de = (d[c].to_numpy(dtype=float) for c in ("tp", "fp", "n_de"))
    if col == "tpr":
        y = tp / np.where(n_de > 0, n_de, np.nan)
        lo, hi = style.wilson_interval(tp, n_de)
    elif col == "fdr":
        disc = tp + fp
        y = np.where(disc >= MIN_DISCOVERIES, fp / np.maximum(disc, 1), np.nan)
        lo, hi = style.wilson_interval(fp, disc)
    elif col == "discoveries":
        ax.plot(x, tp + fp, **kw)
        ax.plot(x, fp, **(kw | {"ls": ":", "mfc": "white", "mew": 0.9}))
        return
    else:
        ax.plot(x, d["auc"], **kw)
        return
    err = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    ax.errorbar(x, y, yerr=np.nan_to_num(err), elinewidth=0.7, capsize=1.5, ecolor=kw["color"],
                **kw)  # fmt: skip


def figure(df):
    """The power figure of a ``power_summary.csv`` table (BH 0.05 rows)."""
    df = df[np.isclose(df["threshold"], 0.05)]
    methods = style.methods_in(df)
    settings = _settings(df)
    nr, nc = max(len(settings), 1), len(_COLS)
    fig, axes = style.panel_grid(lambda r, c: True, nr, nc, width=(style.PAGE_WIDTH - 0.9) / nc,
                                 height=1.45, sharex=True)  # fmt: skip
    handles: dict = {}
    betas = sorted(df["abs_beta"].unique())
    gaps = np.diff(np.log(betas)) if len(betas) > 1 else [1.0]
    shift = style.dodge(len(methods), float(np.min(gaps)))
    top = max(float((df["tp"] + df["fp"]).max()), 1.0) if len(df) else 1.0
    for r, key in enumerate(settings):
        sub = df[(df["scope"] == key[0]) & (df["n_subjects"] == key[1])
                 & (df["cells_per_subject"] == key[2])]  # fmt: skip
        for c, col in enumerate(_COLS):
            ax = axes[r, c]
            if col == "fdr":
                ax.axhline(0.05, color=style.REFERENCE_COLOR, lw=0.8, ls="--")
            if col == "auc":
                ax.axhline(0.5, color=style.REFERENCE_COLOR, lw=0.8, ls="--")
            for i, m in enumerate(methods):
                d = sub[sub["method"] == m].sort_values("abs_beta")
                if d.empty:
                    continue
                _draw(ax, col, d, d["abs_beta"].to_numpy() * shift[i], m)
                handles.setdefault(m, style.method_handle(m))
            ax.set_xscale("log")
            ax.set_xticks(betas, [f"{b:g}" for b in betas])
            ax.minorticks_off()
            if col in ("tpr", "fdr"):
                ax.set_ylim(-0.02, 1.02)
            elif col == "auc":
                ax.set_ylim(0.45, 1.02)
            else:
                ax.set_yscale("symlog", linthresh=1, linscale=0.5)
                ax.set_ylim(0, top * 2)
                ticks = [0, 1] + [10**k for k in range(1, int(np.log10(top * 2)) + 1)]
                ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
            ax.set_ylabel(_YLABELS[col], labelpad=1)
            if r == 0:
                ax.set_title(_TITLES[col])
            if r == nr - 1:
                ax.set_xlabel("|β| (natural-log scale)")
        scope = style.SCOPE_LABELS.get(key[0], key[0])
        axes[r, 0].annotate(f"{scope}\n{key[1]:g} donors,\n{key[2]:g} {style.CELLS_LABEL}",
                            xy=(0, 0.5), xycoords="axes fraction", xytext=(-44, 0),
                            textcoords="offset points", rotation=90, ha="right", va="center",
                            fontsize=7, fontweight="bold", multialignment="center")  # fmt: skip
    if not settings:
        fig.clf()
        ax = fig.add_subplot()
        style.empty_panel(ax, "no power results")
        return fig
    style.panel_letters(axes)
    filled = plt.Line2D([], [], marker="o", color="0.3", ms=3.5)
    hollow = plt.Line2D([], [], marker="o", ls=":", color="0.3", mfc="white", ms=3.5)
    style.method_legend(fig, handles, methods,
                        ((filled, "discoveries (TP + FP)"), (hollow, "false discoveries (FP)")),
                        ncol=3, title="BH 0.05, replicates pooled")  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw ``fig_power`` from ``power_summary.csv`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    return style.save(figure(df), figures_dir, OUTPUTS[0])
