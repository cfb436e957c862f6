"""Estimated against true log fold changes on the realistic scenarios, per method.

``fig_scenario_lfc``: one panel per method (panel letters a, b, …), the DE genes of every
replicate of one scenario and setting (``droplet`` when it was run, else the first scenario; the
setting nearest 10 donors × 200 cells per donor) from ``scenario_lfc_genes.csv.gz``. The x axis
is the true log2 fold change θ/ln 2 (θ the simulated natural-log fold change). The y axis is
each method's estimate on the scale it claims, named in the panel's axis label: a log2 fold
change of the mean (the identity line is drawn: slope 1 is unbiased) or a difference of mean
log2(1 + count) (the LMM's and lmerTest's): not a fold change, so no identity line is drawn and
only its slope and correlation are read. Each panel gives the slope (OLS of the estimate on
the true log2 fold change) and Pearson's r of ``scenario_lfc.csv``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.fig_scenario_power import nearest_setting
from figures.tables import read_table

INPUTS = ["scenario_lfc.csv", "scenario_lfc_genes.csv.gz"]
OUTPUTS = ["fig_scenario_lfc"]

#: the scale id of the tables → the estimate's axis label
SCALE_LABELS = {
    "log2": "estimate: log2 FC",
    "ln": "estimate: natural-log FC",
    "log2_1p": "estimate: difference of log2(1+count)",
    "log2_expm1": "estimate: scanpy logfoldchanges (log2)",
}
PREFERRED_SCENARIO = "droplet"
#: the setting shown: the one nearest this (donors, cells per donor)
REFERENCE_SETTING = (10, 200)


def _color(method: str, i: int) -> str:
    return style.method_color(method)


def _panel_letter(ax, i: int) -> None:
    style.panel_letters([ax], start=i)


def _ylim(y) -> tuple[float, float]:
    """Axis limits holding the central 96% of the estimates (and 0), widened by 20%: a few
    estimates of unconverged fits (|log2 FC| ≈ 15) would flatten the rest; they are drawn at
    the edge and counted in the panel."""
    y = y[np.isfinite(y)]
    if y.size == 0:
        return -1.0, 1.0
    lo, hi = np.quantile(y, [0.02, 0.98])
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.2 * (hi - lo) or 0.5
    return float(lo - pad), float(hi + pad)


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw ``fig_scenario_lfc`` from ``scenario_lfc.csv`` and ``scenario_lfc_genes.csv.gz``
    (the ``make`` of the :mod:`figures` package)."""
    style.setup()
    acc = read_table(Path(results_dir) / INPUTS[0])
    genes = read_table(Path(results_dir) / INPUTS[1])
    scen = list(dict.fromkeys(genes["scenario"].astype(str)))
    sc = PREFERRED_SCENARIO if PREFERRED_SCENARIO in scen else (scen[0] if scen else None)
    if sc is not None:
        g = genes[genes["scenario"] == sc]
        s, m = nearest_setting(zip(g["n_donors"], g["cells_per_donor"], strict=True))
        g = g[(g["n_donors"] == s) & (g["cells_per_donor"] == m)]
        a = acc[(acc["scenario"] == sc) & (acc["n_donors"] == s) & (acc["cells_per_donor"] == m)]
        methods = style.methods_in(g)
    else:
        g, a, methods = genes, acc, []
    nc = min(4, max(len(methods), 1))
    nr = max(1, -(-len(methods) // nc))
    fig, axes = plt.subplots(nr, nc, figsize=(2.4 * nc + 0.4, 2.3 * nr + 0.8), squeeze=False,
                             sharex=True, layout="constrained")  # fmt: skip
    lim = float(np.nanmax(np.abs(g["true_lfc"]))) / np.log(2) * 1.1 if len(g) else 2.0
    for i, meth in enumerate(methods):
        ax = axes.flat[i]
        d = g[g["method"] == meth]
        scale = str(d["lfc_scale"].iloc[0])
        x = d["true_lfc"].to_numpy(float) / np.log(2)
        y = d["log_fc"].to_numpy(float)
        lo, hi = _ylim(y)
        out = (y < lo) | (y > hi)
        ax.scatter(x, np.clip(y, lo, hi), s=5, alpha=0.5, color=_color(meth, i), lw=0)
        ax.set_ylim(lo, hi)
        ax.axhline(0, color="0.7", lw=0.6)
        ax.axvline(0, color="0.7", lw=0.6)
        if scale in ("log2", "ln"):
            k = 1.0 if scale == "log2" else np.log(2)
            ax.plot([-lim, lim], [-k * lim, k * lim], color=style.REFERENCE_COLOR, lw=0.8,
                    ls="--")  # fmt: skip
        r = a[a["method"] == meth]
        if len(r):
            r = r.iloc[0]
            ax.text(0.03, 0.97, f"slope {r['slope']:.2f}\nr = {r['pearson']:.2f}\n"
                    f"n = {int(r['n'])}"
                    + (f"\n{int(out.sum())} beyond the axis" if out.any() else ""),
                    transform=ax.transAxes, va="top", fontsize=7)  # fmt: skip
        ax.set_xlim(-lim, lim)
        ax.set_title(style.method_label(meth))
        ax.set_ylabel(SCALE_LABELS.get(scale, f"estimate ({scale})"))
        if i // nc == nr - 1 or i + nc >= len(methods):
            ax.set_xlabel("true log2 FC")
        _panel_letter(ax, i)
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    if not methods:
        axes.flat[0].set_visible(True)
        style.empty_panel(axes.flat[0], "no log-fold-change estimates")
    else:
        fig.suptitle(f"{sc}: {s} donors, {m} cells per donor; DE genes of "
                     f"{int(g['replicate'].nunique())} replicate(s)")  # fmt: skip
    return style.save(fig, figures_dir, OUTPUTS[0])
