"""Tail counts of the scenario calibration runs against their expectation, per setting.

For each scenario (a pair of panels: p ≤ 10⁻³ and p ≤ 10⁻⁴) and each setting (donors ×
cells per donor along x, replicates and cell types pooled within it: the
``cell_type == "all"`` rows of ``scenario_null_type1.csv``; settings are never pooled), every
method's number of null p-values at or below the threshold (``tail_t``) is a marker, methods
side by side. The grey bar is the central Poisson 99% interval of the count under calibration,
Poisson(``expected_t`` = n·t) (as :func:`validation.metrics.tail_counts` computes it; the table
gives only the expectation and whether the count is inside), the black tick the expectation.
The count axis is symmetric-log (linear below 1), so 0 shows.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from figures import style
from figures.fig_scenario_type1 import pooled_rows
from figures.tables import read_table

INPUTS = ["scenario_null_type1.csv"]
OUTPUTS = ["fig_scenario_tails"]

#: tail thresholds (column suffixes of the table)
THRESHOLDS = (1e-3, 1e-4)
LEVEL = 0.99


def poisson_interval(mu, level: float = LEVEL):
    """Central ``level`` interval of a Poisson(``mu``) count (vectorised)."""
    mu = np.asarray(mu, dtype=float)
    return (stats.poisson.ppf((1 - level) / 2, mu), stats.poisson.ppf((1 + level) / 2, mu))


def figure(df):
    """The tail-count figure of a ``scenario_null_type1.csv`` table."""
    df = pooled_rows(df)
    thresholds = [t for t in THRESHOLDS if f"tail_{t:g}" in df.columns]
    scen = style.scenarios_in(df) if len(df) and thresholds else []
    methods = style.methods_in(df) if len(df) else []
    settings = sorted({(int(s), int(m)) for s, m in zip(df["n_donors"], df["cells_per_donor"],
                                                        strict=True)})  # fmt: skip
    per_row = 2 if len(thresholds) * len(settings) <= 16 else 1
    ncol = max(per_row * len(thresholds), 1)
    nr = max(-(-len(scen) // per_row), 1)
    slots = {(sc, t): (i // per_row, (i % per_row) * len(thresholds) + j)
             for i, sc in enumerate(scen) for j, t in enumerate(thresholds)}  # fmt: skip
    used = set(slots.values())
    fig, axes = style.panel_grid(lambda r, c: not scen or (r, c) in used, nr, ncol,
                                 width=min(2.6, (style.PAGE_WIDTH - 0.5) / ncol),
                                 height=1.65)  # fmt: skip
    xs = {k: i for i, k in enumerate(settings)}
    offs = np.linspace(-0.3, 0.3, max(len(methods), 1)) if len(methods) > 1 else [0.0]
    handles: dict = {}
    ymax = 1.0
    for (sc, t), (r, c) in slots.items():
        ax = axes[r, c]
        key = f"{t:g}"
        d = df[df["scenario"] == sc]
        exp = d.groupby(["n_donors", "cells_per_donor"])[f"expected_{key}"].max()
        for (s, m), mu in exp.items():
            lo, hi = poisson_interval(mu)
            x = xs[(int(s), int(m))]
            ax.add_patch(plt.Rectangle((x - 0.42, lo), 0.84, max(hi - lo, 0.02),
                                       color=style.BAND_COLOR, lw=0, zorder=0))  # fmt: skip
            ax.plot([x - 0.42, x + 0.42], [mu, mu], color=style.REFERENCE_COLOR, lw=0.9)
        for i, meth in enumerate(methods):
            dm = d[d["method"] == meth]
            if dm.empty:
                continue
            pts = zip(dm["n_donors"], dm["cells_per_donor"], strict=True)
            x = np.array([xs[(int(s), int(m))] for s, m in pts]) + offs[i]
            y = dm[f"tail_{key}"].to_numpy(dtype=float)
            ax.plot(x, y, **(style.method_style(meth, ms=4) | {"ls": "none", "zorder": 3}))
            handles.setdefault(meth, style.method_handle(meth, ls="none", ms=4))
            ymax = max(ymax, float(np.nanmax(y)) if len(y) else 0.0)
        ax.set_title(f"{style.scenario_label(sc)}\nnull p ≤ {t:g}")
        ax.set_xticks(range(len(settings)), [f"{s}×{m}" for s, m in settings],
                      rotation=90 if len(settings) > 3 else 0, fontsize=6.5)  # fmt: skip
        ax.set_xlim(-0.6, len(settings) - 0.4)
        if (r + 1, c) not in used:
            ax.set_xlabel("donors × cells per donor")
        if c == 0:
            ax.set_ylabel("null p-values at or\nbelow the threshold")
    top = ymax * 2.5
    ticks = [0, 1] + [10**k for k in range(1, int(np.log10(top)) + 1)]
    for ax in axes.flat:
        if ax.get_visible() and ax.axison and scen:
            ax.set_yscale("symlog", linthresh=1, linscale=0.6)
            ax.set_ylim(0, top)
            ax.set_yticks(ticks, [f"{v:g}" for v in ticks])
            ax.yaxis.set_minor_locator(plt.NullLocator())
    if not scen:
        style.empty_panel(axes[0, 0], "no scenario tail counts")
    else:
        style.panel_letters(axes)
    band = plt.Rectangle((0, 0), 1, 1, color=style.BAND_COLOR)
    tick = plt.Line2D([], [], color=style.REFERENCE_COLOR, lw=0.9)
    style.method_legend(fig, handles, methods,
                        ((tick, "expected count n·t"),
                         (band, f"Poisson {LEVEL:.0%} interval of the count")),
                        ncol=3, title="Null p-value tails per setting (replicates and cell "
                        "types pooled within it)")  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw ``fig_scenario_tails`` from ``scenario_null_type1.csv`` (the ``make`` of the
    :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    return style.save(figure(df), figures_dir, OUTPUTS[0])
