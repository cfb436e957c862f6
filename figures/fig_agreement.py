"""Agreement with reference implementations.

``fig_agreement``: relative differences per comparison × quantity, one point per scenario
(filled: largest relative difference over the values of the scenario; hollow: median), on a
log10 axis; exact zeros are drawn at a floor of 1e-16 (said in the axis label).
``fig_agreement_scatter``: our value against the reference value, one panel per comparison ×
quantity (letters a, b, …), with the identity line. ``fig_agreement`` is one panel (no letter).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["agreement_summary.csv", "agreement_values.csv.gz"]
OUTPUTS = ["fig_agreement", "fig_agreement_scatter"]

FLOOR = 1e-16


def _pairs(df) -> list:
    comps = style.ordered(df["comparison"].unique(), style.COMPARISON_LABELS)
    return [(c, q) for c in comps for q in df.loc[df["comparison"] == c, "quantity"].unique()]


def _strip(summary):
    pairs = _pairs(summary)
    fig, ax = plt.subplots(figsize=(5.5, 0.2 * max(len(pairs), 4) + 1.2), layout="constrained")
    rng = np.random.default_rng(0)  # vertical jitter only
    for k, (c, q) in enumerate(pairs):
        d = summary[(summary["comparison"] == c) & (summary["quantity"] == q)]
        y = -k + rng.uniform(-0.2, 0.2, len(d))
        color = style.COMPARISON_COLORS.get(c, "0.4")
        ax.scatter(np.maximum(d["max_rel_diff"], FLOOR), y, s=12, color=color, lw=0)
        ax.scatter(np.maximum(d["median_rel_diff"], FLOOR), y, s=12, facecolors="none",
                   edgecolors=color, lw=0.7)  # fmt: skip
    if not pairs:
        style.empty_panel(ax, "no agreement results")
        return fig
    ax.set_xscale("log")
    ax.set_xlim(FLOOR / 3, 3)
    ax.set_yticks([-k for k in range(len(pairs))],
                  [f"{style.comparison_label(c)}: {q}" for c, q in pairs])  # fmt: skip
    ax.set_ylim(-len(pairs) + 0.4, 0.6)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.set_xlabel("relative difference |ours − ref| / max(|ref|, floor)\n"
                  f"(log scale; exact zeros shown at {FLOOR:g})")  # fmt: skip
    handles = [plt.Line2D([], [], ls="none", marker="o", color="0.3", ms=4),
               plt.Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", ms=4)]  # fmt: skip
    style.figure_legend(fig, handles, ["largest over a scenario", "median over a scenario"],
                        ncol=2)  # fmt: skip
    return fig


def _scatter(values):
    pairs = _pairs(values)
    nc = min(4, max(len(pairs), 1))
    nr = max(int(np.ceil(len(pairs) / nc)), 1)
    fig, axes = style.panel_grid(lambda r, c: r * nc + c < max(len(pairs), 1), nr, nc,
                                 width=(style.PAGE_WIDTH - 0.5) / nc, height=1.45)  # fmt: skip
    for k, ax in enumerate(axes.flat[: len(pairs)]):
        c, q = pairs[k]
        d = values[(values["comparison"] == c) & (values["quantity"] == q)]
        d = d[np.isfinite(d["ours"]) & np.isfinite(d["reference"])]
        ax.scatter(d["reference"], d["ours"], s=4, lw=0, alpha=0.7, rasterized=True,
                   color=style.COMPARISON_COLORS.get(c, "0.4"))  # fmt: skip
        if len(d):
            lo = min(d["reference"].min(), d["ours"].min())
            hi = max(d["reference"].max(), d["ours"].max())
            ax.plot([lo, hi], [lo, hi], color=style.REFERENCE_COLOR, lw=0.6)
        ax.set_title(f"{style.comparison_label(c)}\n{q} (n = {len(d)})", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.xaxis.get_offset_text().set_fontsize(6.5)
        ax.yaxis.get_offset_text().set_fontsize(6.5)
        ax.locator_params(nbins=4)
        ax.ticklabel_format(style="sci", scilimits=(-3, 3), useMathText=True)
        if k % nc == 0:
            ax.set_ylabel("ours (pyflashmm)")
        if k >= len(pairs) - nc:
            ax.set_xlabel("reference")
    if not pairs:
        style.empty_panel(axes[0, 0], "no agreement values")
    else:
        style.panel_letters(axes)
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the agreement figures from the agreement tables (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    summary = read_table(Path(results_dir) / INPUTS[0])
    values = read_table(Path(results_dir) / INPUTS[1])
    paths = style.save(_strip(summary), figures_dir, OUTPUTS[0])
    paths += style.save(_scatter(values), figures_dir, OUTPUTS[1])
    return paths
