"""Type-I error of the scenario calibration runs against the number of donors, per setting.

One panel per scenario × cells per donor (small multiples; a scenario's panels sit side by
side, letters a, b, … in reading order). Each point is one setting (scenario, donors, cells
per donor) with the null tests of all its replicates and cell types pooled (the
``cell_type == "all"`` rows of ``scenario_null_type1.csv``); settings are never pooled. Bars:
Wilson 95% intervals (``lo_α``/``hi_α``); dashed line: α. The y axis is linear from 0 to 15%
at α = 0.05 and 0–5% at α = 0.01; a rate above it (the cell-level methods) is an arrow on the
top edge with its value written above. ``fig_scenario_type1`` is α = 0.05,
``fig_scenario_type1_alpha001`` α = 0.01.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["scenario_null_type1.csv"]
OUTPUTS = ["fig_scenario_type1", "fig_scenario_type1_alpha001"]
_ALPHAS = (0.05, 0.01)


def pooled_rows(df):
    """The per-setting rows pooled over cell types (``cell_type == "all"``)."""
    if "cell_type" in df.columns:
        df = df[df["cell_type"].astype(str) == "all"]
    keys = [c for c in ("scenario", "n_donors", "cells_per_donor", "method") if c in df.columns]
    return df.drop_duplicates(keys)


def figure(df, alpha: float):
    """The figure at ``alpha`` of a ``scenario_null_type1.csv`` table."""
    key = f"{alpha:g}"
    df = pooled_rows(df)
    if f"type1_{key}" in df.columns:
        df = df[np.isfinite(df[f"type1_{key}"].astype(float))]
    else:
        df = df.iloc[0:0]
    scen = style.scenarios_in(df) if len(df) else []
    cells = sorted(df["cells_per_donor"].unique()) if len(df) else []
    per_row = max(1, 4 // max(len(cells), 1))
    panels = [(s, m) for s in scen for m in cells
              if ((df["scenario"] == s) & (df["cells_per_donor"] == m)).any()]  # fmt: skip
    slots = {(s, m): (i // per_row, (i % per_row) * len(cells) + j)
             for i, s in enumerate(scen) for j, m in enumerate(cells)}  # fmt: skip
    nr = max(-(-len(scen) // per_row), 1)
    nc = max(per_row * len(cells), 1)
    used = {slots[p] for p in panels}
    fig, axes = style.panel_grid(lambda r, c: not panels or (r, c) in used, nr, nc,
                                 width=min(2.6, (style.PAGE_WIDTH - 0.5) / nc), height=1.7,
                                 sharey=True)  # fmt: skip
    methods = style.methods_in(df) if len(df) else []
    top = style.rate_limit(alpha)
    donors = sorted(df["n_donors"].unique()) if len(df) else []
    gaps = np.diff(np.log(donors)) if len(donors) > 1 else [1.0]
    shift = style.dodge(len(methods), float(np.min(gaps)))
    handles: dict = {}
    titles: dict = {}
    for s, m in panels:
        r, c = slots[(s, m)]
        ax = axes[r, c]
        sub = df[(df["scenario"] == s) & (df["cells_per_donor"] == m)]
        ax.axhline(alpha, color=style.REFERENCE_COLOR, lw=0.8, ls="--")
        stack: dict = {}
        for i, meth in enumerate(methods):
            d = sub[sub["method"] == meth].sort_values("n_donors")
            if d.empty:
                continue
            style.plot_rates(ax, d["n_donors"] * shift[i], d[f"type1_{key}"], d[f"lo_{key}"],
                             d[f"hi_{key}"], top=top, method=meth, stack=stack,
                             base=d["n_donors"])  # fmt: skip
            handles.setdefault(meth, style.method_handle(meth))
        ax.set_xscale("log")
        ax.set_xticks(donors, [f"{v:g}" for v in donors])
        ax.minorticks_off()
        ax.set_xlim(min(donors) / 1.4, max(donors) * 1.4)
        style.rate_axis(ax, top)
        ax.tick_params(labelleft=True)
        titles[(r, c)] = (f"{style.scenario_label(s)}\n{m:g} {style.CELLS_LABEL}",
                          style.clipped_pad(stack))  # fmt: skip
        if (r + 1, c) not in used:
            ax.set_xlabel("number of donors")
        if c == 0:
            ax.set_ylabel(f"type-I error at α = {alpha:g}")
    style.aligned_titles(axes, titles)
    if not panels:
        style.empty_panel(axes[0, 0], f"no scenario results at α = {alpha:g}")
    else:
        style.panel_letters(axes)
    ref = plt.Line2D([], [], color=style.REFERENCE_COLOR, lw=0.8, ls="--")
    arrow = plt.Line2D([], [], ls="none", marker="^", color="0.3", ms=4.5)
    style.method_legend(fig, handles, methods,
                        ((ref, f"nominal α = {alpha:g}"),
                         (arrow, f"above {top:.0%}: value written above the arrow")),
                        ncol=3, title="Null genes, per setting (replicates and cell types "
                        "pooled within it); bars: Wilson 95% intervals")  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the scenario type-I error figures from ``scenario_null_type1.csv`` (the ``make``
    of the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    paths = []
    for alpha, name in zip(_ALPHAS, OUTPUTS, strict=True):
        paths += style.save(figure(df, alpha), figures_dir, name)
    return paths
