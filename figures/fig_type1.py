"""Type-I error against the number of subjects, one panel per (subject variance, cells).

Points are the observed rejection rates of null genes at a nominal α with Wilson 95%
intervals as error bars (``ci_low``/``ci_high``); the dashed line is α. Methods are dodged
slightly along the (log-scaled) x axis; the y axis is square-root scaled so that rates near
α and rates near 1 both stay readable. ``fig_type1`` is α = 0.05, ``fig_type1_alpha001``
α = 0.01.
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


def _figure(df, alpha: float, methods: list):
    df = df[np.isclose(df["alpha"], alpha)]
    rows = sorted(df["var_random_effects"].unique())
    cols = sorted(df["cells_per_subject"].unique())
    nr, nc = max(len(rows), 1), max(len(cols), 1)
    fig, axes = plt.subplots(nr, nc, figsize=(2.5 * nc + 0.4, 2.2 * nr + 0.9), squeeze=False,
                             sharey=True, layout="constrained")  # fmt: skip
    handles: dict = {}
    subjects = sorted(df["n_subjects"].unique())
    shift = np.exp(np.linspace(-0.06, 0.06, max(len(methods), 1)))
    for r, rv in enumerate(rows):
        for c, cv in enumerate(cols):
            ax = axes[r, c]
            sub = df[(df["var_random_effects"] == rv) & (df["cells_per_subject"] == cv)]
            if sub.empty:
                style.empty_panel(ax, "not run")
                continue
            ax.axhline(alpha, color=style.REFERENCE_COLOR, lw=0.8, ls="--")
            for i, m in enumerate(methods):
                d = sub[sub["method"] == m].sort_values("n_subjects")
                if d.empty:
                    continue
                y = d["type1_error"].to_numpy()
                err = np.vstack([y - d["ci_low"].to_numpy(), d["ci_high"].to_numpy() - y])
                h = ax.errorbar(d["n_subjects"] * shift[i], y, yerr=np.clip(err, 0, None),
                                color=style.method_color(m), marker=style.MARKERS[i % 8], ms=3.5,
                                lw=0.9, elinewidth=0.8, capsize=1.5)  # fmt: skip
                handles.setdefault(m, h)
            ax.set_xscale("log")
            ax.set_xticks(subjects, [f"{s:g}" for s in subjects])
            ax.minorticks_off()
            ax.set_xlim(min(subjects) / 1.3, max(subjects) * 1.3)
            style.sqrt_axis(ax, "y")
            ax.set_ylim(0, 1)
            ax.set_title(f"subject variance {rv:g}\n{cv:g} cells per subject")
            if r == nr - 1:
                ax.set_xlabel("number of subjects")
            if c == 0:
                ax.set_ylabel(f"type-I error at α = {alpha:g}\n(square-root scale)")
    if not rows:
        style.empty_panel(axes[0, 0], f"no results at α = {alpha:g}")
    ref = plt.Line2D([], [], color=style.REFERENCE_COLOR, lw=0.8, ls="--")
    style.method_legend(fig, handles, methods, ((ref, f"nominal α = {alpha:g}"),),
                        ncol=2 if nc == 1 else 4,
                        title="Null genes; bars: Wilson 95% intervals")  # fmt: skip
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the type-I error figures from ``calibration_type1.csv`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    methods = style.methods_in(df)
    paths = []
    for alpha, name in zip(_ALPHAS, OUTPUTS, strict=True):
        paths += style.save(_figure(df, alpha, methods), figures_dir, name)
    return paths
