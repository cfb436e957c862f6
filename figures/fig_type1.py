"""Type-I error against the number of donors, one panel per (donor variance σ_b², cells).

Points are the observed rejection rates of null genes at a nominal α with Wilson 95%
intervals as error bars (``ci_low``/``ci_high``); the dashed line is α. Methods are dodged
slightly along the (log-scaled) x axis. The y axis is linear from 0 to 3α at α = 0.05 (0–15%)
and 5α at α = 0.01 (0–5%); a rate above the axis (the methods that take cells as replicates)
is drawn as an arrow on the top edge with its value written above it. ``fig_type1`` is
α = 0.05, ``fig_type1_alpha001`` α = 0.01. Donors are the ``n_subjects`` of the table.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["calibration_type1.csv"]
OUTPUTS = ["fig_type1", "fig_type1_alpha001"]
_ALPHAS = (0.05, 0.01)


def figure(df, alpha: float, methods: list | None = None):
    """The type-I error figure at ``alpha`` of a ``calibration_type1.csv`` table."""
    df = df[np.isclose(df["alpha"], alpha)]
    methods = style.methods_in(df) if methods is None else methods
    rows = sorted(df["var_random_effects"].unique())
    cols = sorted(df["cells_per_subject"].unique())
    nr, nc = max(len(rows), 1), max(len(cols), 1)
    have = {k for k, _ in df.groupby(["var_random_effects", "cells_per_subject"])}
    fig, axes = style.panel_grid(
        lambda r, c: not rows or (rows[r], cols[c]) in have, nr, nc,
        width=min(2.3, (style.PAGE_WIDTH - 0.5) / nc), height=1.85, sharey=True,
    )  # fmt: skip
    top = style.rate_limit(alpha)
    handles: dict = {}
    titles: dict = {}
    subjects = sorted(df["n_subjects"].unique())
    gaps = np.diff(np.log(subjects)) if len(subjects) > 1 else [1.0]
    shift = style.dodge(len(methods), float(np.min(gaps)))
    for r, rv in enumerate(rows):
        for c, cv in enumerate(cols):
            ax = axes[r, c]
            sub = df[(df["var_random_effects"] == rv) & (df["cells_per_subject"] == cv)]
            if sub.empty:
                continue
            ax.axhline(alpha, color=style.REFERENCE_COLOR, lw=0.8, ls="--")
            stack: dict = {}
            for i, m in enumerate(methods):
                d = sub[sub["method"] == m].sort_values("n_subjects")
                if d.empty:
                    continue
                style.plot_rates(ax, d["n_subjects"] * shift[i], d["type1_error"], d["ci_low"],
                                 d["ci_high"], top=top, method=m, stack=stack,
                                 base=d["n_subjects"])  # fmt: skip
                handles.setdefault(m, style.method_handle(m))
            ax.set_xscale("log")
            ax.set_xticks(subjects, [f"{s:g}" for s in subjects])
            ax.minorticks_off()
            ax.set_xlim(min(subjects) / 1.3, max(subjects) * 1.3)
            style.rate_axis(ax, top)
            titles[(r, c)] = (f"{style.SIGMA_LABEL} = {rv:g}\n{cv:g} {style.CELLS_LABEL}",
                              style.clipped_pad(stack))  # fmt: skip
            if r == nr - 1 or (rows[r + 1], cv) not in have:
                ax.set_xlabel(style.DONORS_LABEL)
            ax.tick_params(labelleft=True)
            if c == 0:
                ax.set_ylabel(f"type-I error at α = {alpha:g}")
    style.aligned_titles(axes, titles)
    if not rows:
        style.empty_panel(axes[0, 0], f"no results at α = {alpha:g}")
    else:
        style.panel_letters(axes)
    ref = plt.Line2D([], [], color=style.REFERENCE_COLOR, lw=0.8, ls="--")
    arrow = plt.Line2D([], [], ls="none", marker="^", color="0.3", ms=4.5)
    style.method_legend(fig, handles, methods,
                        ((ref, f"nominal α = {alpha:g}"),
                         (arrow, f"above {top:.0%}: value written above the arrow")),
                        ncol=3, title="Null genes; bars: Wilson 95% intervals")  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the type-I error figures from ``calibration_type1.csv`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    methods = style.methods_in(df)
    paths = []
    for alpha, name in zip(_ALPHAS, OUTPUTS, strict=True):
        paths += style.save(figure(df, alpha, methods), figures_dir, name)
    return paths
