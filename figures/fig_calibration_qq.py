"""QQ plots of null p-values, methods overlaid in each panel.

x is −log10 of the expected quantile (j − 0.5)/n, y is −log10 of the observed p-value, the grey
band is the pointwise 95% interval of the j-th uniform order statistic (Beta(j, n − j + 1)
quantiles) and the black line the diagonal. ``fig_calibration_qq``: rows are donor-variance
(σ_b²) settings, columns cells per donor, at the smallest number of donors (where the df
approximation matters most). ``fig_calibration_qq_subjects``: rows are numbers of donors,
columns cells per donor, at the largest σ_b². Donors are the ``subjects`` of the table. Points
are thinned in the bulk (the 200 smallest p-values are all kept); values above a panel are
drawn on its top edge. Each panel's title gives its number of null genes n, which sets how far
the expected axis reaches (−log10(0.5/n)).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from figures import style
from figures.tables import read_table

INPUTS = ["calibration_pvalues.csv.gz"]
OUTPUTS = ["fig_calibration_qq", "fig_calibration_qq_subjects"]

_COL = "cells_per_subject"


def qq_points(p, *, tail: int = 200, bulk: int = 300):
    """Thinned QQ coordinates of p-values with the pointwise 95% band.

    Parameters
    ----------
    p : array_like
        p-values (non-finite values dropped; 0 is shown at the smallest positive double).
    tail : int
        Number of smallest p-values always kept.
    bulk : int
        Number of log-spaced order statistics kept from the rest.

    Returns
    -------
    expected, observed, band_low, band_high : ndarray
        −log10 of the expected and observed quantiles and of the band limits.
    """
    p = np.asarray(p, dtype=float)
    p = np.sort(p[np.isfinite(p)])
    n = p.size
    if n == 0:
        return (np.empty(0),) * 4
    idx = np.unique(np.concatenate([np.arange(min(n, tail)),
                                    np.geomspace(1, n, bulk).astype(int) - 1]))  # fmt: skip
    j = idx + 1.0
    expected = -np.log10((j - 0.5) / n)
    observed = -np.log10(np.maximum(p[idx], np.finfo(float).tiny))
    band_low = -np.log10(stats.beta.ppf(0.975, j, n - j + 1))
    band_high = -np.log10(stats.beta.ppf(0.025, j, n - j + 1))
    return expected, observed, band_low, band_high


def _panel(ax, sub, methods, handles) -> None:
    n_ref = int(sub.groupby("method").size().max())
    ex, _, lo, hi = qq_points((np.arange(1, n_ref + 1) - 0.5) / n_ref)
    top = max(2.0 * ex.max(), 3.0)
    ax.fill_between(ex, lo, hi, color=style.BAND_COLOR, lw=0)
    ax.plot([0, ex.max()], [0, ex.max()], color=style.REFERENCE_COLOR, lw=0.8)
    for m in methods:
        e, o, _, _ = qq_points(sub.loc[sub["method"] == m, "p_value"])
        if e.size == 0:
            continue
        kw = style.method_style(m, ms=2.4) | {"ls": "none", "alpha": 0.85}
        ax.plot(e, np.minimum(o, top), clip_on=False, **kw)
        handles.setdefault(m, style.method_handle(m, ls="none", ms=4))
    ax.set_xlim(0, ex.max() * 1.03)
    ax.set_ylim(0, top * 1.03)


def _grid(df, row_key: str, row_fmt, fixed_key: str, fixed_value, methods, title: str):
    df = df[df[fixed_key] == fixed_value]
    rows, cols = sorted(df[row_key].unique()), sorted(df[_COL].unique())
    nr, nc = max(len(rows), 1), max(len(cols), 1)
    have = {k for k, _ in df.groupby([row_key, _COL])}
    fig, axes = style.panel_grid(lambda r, c: not rows or (rows[r], cols[c]) in have, nr, nc,
                                 width=min(2.3, (style.PAGE_WIDTH - 0.5) / nc),
                                 height=2.0)  # fmt: skip
    handles: dict = {}
    for r, rv in enumerate(rows):
        for c, cv in enumerate(cols):
            ax = axes[r, c]
            sub = df[(df[row_key] == rv) & (df[_COL] == cv)]
            if sub.empty:
                continue
            _panel(ax, sub, methods, handles)
            n = int(sub.groupby("method").size().max())
            ax.set_title(f"{row_fmt(rv)}\n{cv:g} {style.CELLS_LABEL} (n = {n} tests)")
            if r == nr - 1 or (rows[r + 1], cv) not in have:
                ax.set_xlabel("expected −log10 p")
            if c == 0:
                ax.set_ylabel("observed −log10 p")
    if not rows:
        style.empty_panel(axes[0, 0], "no null p-values")
    else:
        style.panel_letters(axes)
    band = plt.Rectangle((0, 0), 1, 1, color=style.BAND_COLOR)
    style.method_legend(fig, handles, methods, ((band, "pointwise 95% band"),),
                        ncol=3, title=title)  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the QQ figures from ``calibration_pvalues.csv.gz`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    methods = style.methods_in(df)
    paths = []
    ns = df["n_subjects"].min() if len(df) else 0
    fig = _grid(df, "var_random_effects", lambda v: f"{style.SIGMA_LABEL} = {v:g}", "n_subjects",
                ns, methods, f"Null p-values, {ns:g} donors (subjects)")  # fmt: skip
    paths += style.save(fig, figures_dir, OUTPUTS[0])
    vre = df["var_random_effects"].max() if len(df) else 0
    fig = _grid(df, "n_subjects", lambda v: f"{v:g} donors (subjects)", "var_random_effects", vre,
                methods, f"Null p-values, {style.SIGMA_LABEL} = {vre:g}")  # fmt: skip
    paths += style.save(fig, figures_dir, OUTPUTS[1])
    return paths
