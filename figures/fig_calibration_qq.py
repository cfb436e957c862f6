"""QQ plots of null p-values, methods overlaid in each panel.

x is −log10 of the expected quantile (j − 0.5)/n, y is −log10 of the observed p-value, the grey
band is the pointwise 95% interval of the j-th uniform order statistic (Beta(j, n − j + 1)
quantiles) and the black line the diagonal. ``fig_calibration_qq``: rows are subject-variance
settings, columns cells per subject, at the smallest number of subjects (where the df
approximation matters most). ``fig_calibration_qq_subjects``: rows are numbers of subjects,
columns cells per subject, at the largest subject variance. Points are thinned in the bulk
(the 200 smallest p-values are all kept); values above a panel are drawn on its top edge.
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
    for i, m in enumerate(methods):
        e, o, _, _ = qq_points(sub.loc[sub["method"] == m, "p_value"])
        if e.size == 0:
            continue
        (h,) = ax.plot(e, np.minimum(o, top), ls="none", marker=style.MARKERS[i % 8], ms=2.2,
                       mew=0, color=style.method_color(m), alpha=0.8)  # fmt: skip
        handles.setdefault(m, h)
    ax.set_xlim(0, ex.max() * 1.03)
    ax.set_ylim(0, top * 1.03)


def _grid(df, row_key: str, row_fmt, fixed_key: str, fixed_value, methods, title: str):
    df = df[df[fixed_key] == fixed_value]
    rows, cols = sorted(df[row_key].unique()), sorted(df[_COL].unique())
    nr, nc = max(len(rows), 1), max(len(cols), 1)
    fig, axes = plt.subplots(nr, nc, figsize=(2.4 * nc + 0.3, 2.2 * nr + 0.8), squeeze=False,
                             layout="constrained")  # fmt: skip
    handles: dict = {}
    for r, rv in enumerate(rows):
        for c, cv in enumerate(cols):
            ax = axes[r, c]
            sub = df[(df[row_key] == rv) & (df[_COL] == cv)]
            if sub.empty:
                style.empty_panel(ax, "not run")
                continue
            _panel(ax, sub, methods, handles)
            ax.set_title(f"{row_fmt(rv)}\n{cv:g} cells per subject")
            if r == nr - 1:
                ax.set_xlabel("expected −log10 p")
            if c == 0:
                ax.set_ylabel("observed −log10 p")
    if not rows:
        style.empty_panel(axes[0, 0], "no null p-values")
    band = plt.Rectangle((0, 0), 1, 1, color=style.BAND_COLOR)
    style.method_legend(fig, handles, methods, ((band, "pointwise 95% band"),),
                        ncol=2 if nc == 1 else 4, markerscale=3, title=title)  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the QQ figures from ``calibration_pvalues.csv.gz`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    methods = style.methods_in(df)
    paths = []
    ns = df["n_subjects"].min() if len(df) else 0
    fig = _grid(df, "var_random_effects", lambda v: f"subject variance {v:g}", "n_subjects", ns,
                methods, f"Null p-values, {ns:g} subjects")  # fmt: skip
    paths += style.save(fig, figures_dir, OUTPUTS[0])
    vre = df["var_random_effects"].max() if len(df) else 0
    fig = _grid(df, "n_subjects", lambda v: f"{v:g} subjects", "var_random_effects", vre, methods,
                f"Null p-values, subject variance {vre:g}")  # fmt: skip
    paths += style.save(fig, figures_dir, OUTPUTS[1])
    return paths
