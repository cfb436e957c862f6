"""QQ plots of the null p-values of the scenario calibration runs, one panel per scenario.

Each panel is one setting (scenario, donors, cells per donor) with the p-values of all its
replicates and cell types pooled (settings are never pooled), methods overlaid: x is −log10 of
the expected quantile (j − 0.5)/n, y −log10 of the observed p-value, the grey band the
pointwise 95% interval of the j-th uniform order statistic (Beta(j, n − j + 1)) and the black
line the diagonal, read from the thinned coordinates of ``scenario_null_qq.csv.gz``
(:func:`validation.scenario_null.qq_table`). ``fig_scenario_qq`` shows the setting with the
most tests (the tail setting when the run has one; else the most donors, then the most cells
per donor) and ``fig_scenario_qq_fewest_donors`` the fewest donors at the most cells per donor;
a band is drawn for each number of tests among the methods (overlapping where they agree). How
far the expected axis reaches is set by the number of tests n of a panel (−log10(0.5/n)):
reaching −log10 p ≈ 5 needs about 10⁵ tests, and the legend title says so when a panel has
fewer. Observed values above a panel are drawn on its top edge.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["scenario_null_qq.csv.gz"]
OUTPUTS = ["fig_scenario_qq", "fig_scenario_qq_fewest_donors"]

#: the −log10 p that a QQ plot should reach, and the tests that needs (0.5/n = 10⁻⁵)
TARGET = 5.0


def setting_of(d, fewest_donors: bool) -> tuple:
    """The (donors, cells per donor) shown for one scenario's QQ rows ``d``."""
    if fewest_donors:
        s = d["n_donors"].min()
        return s, d.loc[d["n_donors"] == s, "cells_per_donor"].max()
    n = d.groupby(["n_donors", "cells_per_donor"])["n_tests"].max()
    best = n[n == n.max()].index.max()  # ties: the most donors, then the most cells
    return best


def figure(df, fewest_donors: bool = False):
    """The QQ figure of a ``scenario_null_qq.csv.gz`` table."""
    scen = style.scenarios_in(df) if len(df) else []
    methods = style.methods_in(df) if len(df) else []
    nc = min(3, max(len(scen), 1))
    nr = max(-(-len(scen) // nc), 1)
    fig, axes = style.panel_grid(lambda r, c: not scen or r * nc + c < len(scen), nr, nc,
                                 width=min(2.3, (style.PAGE_WIDTH - 0.5) / nc),
                                 height=2.05)  # fmt: skip
    handles: dict = {}
    n_max = None
    for k, sc in enumerate(scen):
        ax = axes.flat[k]
        d = df[df["scenario"] == sc]
        s, m = setting_of(d, fewest_donors)
        sub = d[(d["n_donors"] == s) & (d["cells_per_donor"] == m)]
        n = int(sub["n_tests"].max()) if len(sub) else 0
        n_max = n if n_max is None else max(n_max, n)
        if n:
            # one band per number of tests: a method's band is that of its own n (the tail
            # methods of a tail setting have many more tests than the others)
            for n_k in sorted(set(sub["n_tests"].astype(int)), reverse=True):
                one = sub[sub["n_tests"] == n_k]
                one = one[one["method"] == one["method"].iloc[0]]
                ax.fill_between(one["expected"], one["band_low"], one["band_high"],
                                color=style.BAND_COLOR, lw=0, alpha=0.6)  # fmt: skip
            ex = sub.loc[sub["n_tests"] == n, "expected"].to_numpy(float)
            top = max(2.0 * ex.max(), 3.0)
            ax.plot([0, ex.max()], [0, ex.max()], color=style.REFERENCE_COLOR, lw=0.8)
            for meth in methods:
                q = sub[sub["method"] == meth]
                if q.empty:
                    continue
                kw = style.method_style(meth, ms=2.6) | {"ls": "none", "alpha": 0.85}
                ax.plot(q["expected"], np.minimum(q["observed"], top), clip_on=False, **kw)
                handles.setdefault(meth, style.method_handle(meth, ls="none", ms=4))
            ax.set_xlim(0, ex.max() * 1.03)
            ax.set_ylim(0, top * 1.03)
        ns = sorted(set(sub["n_tests"].astype(int))) if len(sub) else [0]
        span = f"{ns[0]:,}" if len(ns) == 1 else f"{ns[0]:,}–{ns[-1]:,}"
        ax.set_title(f"{style.scenario_label(sc)}\n{s:g} donors, {m:g} {style.CELLS_LABEL}\n"
                     f"n = {span} tests per method", fontsize=7)  # fmt: skip
        if k // nc == nr - 1 or (k + nc) >= len(scen):
            ax.set_xlabel("expected −log10 p")
        if k % nc == 0:
            ax.set_ylabel("observed −log10 p")
    if not scen:
        style.empty_panel(axes[0, 0], "no scenario null p-values")
    else:
        style.panel_letters(axes)
    which = "fewest donors" if fewest_donors else "setting with the most tests"
    title = f"Null p-values per scenario, {which} (replicates and cell types pooled)"
    if n_max is not None and -np.log10(0.5 / max(n_max, 1)) < TARGET:
        title += (f"\nwith n ≤ {n_max} tests per panel the expected −log10 p reaches at most "
                  f"{-np.log10(0.5 / max(n_max, 1)):.1f}; reaching {TARGET:g} needs "
                  f"{0.5 * 10**TARGET:,.0f} tests")  # fmt: skip
    band = plt.Rectangle((0, 0), 1, 1, color=style.BAND_COLOR)
    style.method_legend(fig, handles, methods, ((band, "pointwise 95% band"),), ncol=3,
                        title=title)  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the scenario QQ figures from ``scenario_null_qq.csv.gz`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    paths = style.save(figure(df, False), figures_dir, OUTPUTS[0])
    paths += style.save(figure(df, True), figures_dir, OUTPUTS[1])
    return paths
