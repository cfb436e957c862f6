"""Power on the realistic scenarios: TPR at matched observed FDR and the discoveries behind it.

``fig_scenario_power`` (target FDR 0.05) and ``fig_scenario_power_fdr10`` (0.1): one column per
scenario, and for each number of cells per donor a row of TPR at matched observed FDR and a
row of the number of discoveries at that cutoff, against the number of donors; replicate means
with their 95% t intervals (``scenario_power_summary.csv``). A TPR whose cutoff rests on fewer
than 5 discoveries (replicate mean) is drawn hollow: its observed FDR is a ratio of a handful of
counts. The discoveries are on a symmetric-log axis; the grey band marks 0–5.

``fig_scenario_fdr_tpr``: iCOBRA-style observed FDR (x, square-root scale) against TPR (y),
one panel per scenario at one setting (the one nearest 10 donors × 200 cells per donor, on a
log scale), the genes of all replicates ranked together (``scenario_power_curves.csv.gz``).
Curves start at 5 discoveries; the BH 0.01/0.05/0.1 points (per-replicate calls summed) are
filled when the observed FDR is at most the nominal level and hollow otherwise, the BH 0.05
point is labelled with its discoveries per replicate, and a BH point with fewer than 5
discoveries in all is not drawn (the methods concerned are listed at the panel's top left).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["scenario_power_summary.csv", "scenario_power_curves.csv.gz"]
OUTPUTS = ["fig_scenario_power", "fig_scenario_power_fdr10", "fig_scenario_fdr_tpr"]

#: fewer discoveries than this: an observed FDR is not drawn
FEW = 5
#: the setting of the FDR–TPR panels: the one nearest this (donors, cells per donor)
REFERENCE_SETTING = (10, 200)
_GUIDES = (0.01, 0.05, 0.1)


def _color(method: str, i: int) -> str:
    return style.method_color(method)


def _marker(i: int) -> str:
    return style.MARKERS[i % len(style.MARKERS)]


def _panel_letter(ax, i: int) -> None:
    style.panel_letters([ax], start=i)


def _scenarios(table) -> list:
    return list(dict.fromkeys(table["scenario"].astype(str)))


def nearest_setting(settings, reference=REFERENCE_SETTING) -> tuple[int, int]:
    """The (donors, cells per donor) of ``settings`` nearest ``reference`` on log scales
    (ties: the larger design)."""
    settings = sorted({(int(s), int(m)) for s, m in settings})

    def dist(sm):
        return (np.log(sm[0] / reference[0]) ** 2 + np.log(sm[1] / reference[1]) ** 2,
                -sm[0], -sm[1])  # fmt: skip

    return min(settings, key=dist)


def _errorbar(ax, x, y, lo, hi, *, color, marker, hollow):
    """Points with their intervals (hollow where asked), joined by a line; a legend handle."""
    yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    yerr = np.where(np.isfinite(yerr), yerr, 0.0)
    for i in range(len(x)):
        ax.errorbar([x[i]], [y[i]], yerr=yerr[:, [i]], color=color, marker=marker, ms=4,
                    mfc="white" if hollow[i] else color, mec=color, lw=0, elinewidth=0.8,
                    capsize=1.5, zorder=3)  # fmt: skip
    ax.plot(x, y, color=color, lw=1)
    return plt.Line2D([], [], color=color, marker=marker, ms=4, lw=1)


def _power_figure(summary, fdr: float, name: str, figures_dir: Path) -> list[Path]:
    a = f"{fdr:g}"
    tpr, disc = f"tpr_matched_{a}", f"discoveries_matched_{a}"
    scen = _scenarios(summary)
    cells = sorted(summary["cells_per_donor"].unique()) if len(summary) else []
    methods = style.methods_in(summary) if len(summary) else []
    nc, nr = max(len(scen), 1), max(2 * len(cells), 2)
    fig, axes = plt.subplots(nr, nc, figsize=(2.3 * nc + 0.6, 1.9 * nr + 1.2), squeeze=False,
                             sharex=True, layout="constrained")  # fmt: skip
    handles: dict = {}
    letter = 0
    for r, m in enumerate(cells):
        for c, sc in enumerate(scen):
            ax_t, ax_d = axes[2 * r, c], axes[2 * r + 1, c]
            d = summary[(summary["scenario"] == sc) & (summary["cells_per_donor"] == m)]
            for i, meth in enumerate(methods):
                g = d[d["method"] == meth].sort_values("n_donors")
                if g.empty or tpr not in g.columns:
                    continue
                x = g["n_donors"].to_numpy(float)
                few = g[disc].to_numpy(float) < FEW
                color, mk = _color(meth, i), _marker(i)
                h = _errorbar(ax_t, x, g[tpr].to_numpy(float), g[f"{tpr}_lo"].to_numpy(float),
                              g[f"{tpr}_hi"].to_numpy(float), color=color, marker=mk,
                              hollow=few)  # fmt: skip
                handles.setdefault(meth, h)
                _errorbar(ax_d, x, g[disc].to_numpy(float), g[f"{disc}_lo"].to_numpy(float),
                          g[f"{disc}_hi"].to_numpy(float), color=color, marker=mk,
                          hollow=few)  # fmt: skip
            ax_t.set_ylim(-0.03, 1.03)
            ax_d.set_yscale("symlog", linthresh=1)
            ax_d.set_ylim(bottom=0)
            ax_d.axhspan(0, FEW, color=style.BAND_COLOR, zorder=0)
            for ax in (ax_t, ax_d):
                ax.set_xscale("log")
                ticks = sorted(summary["n_donors"].unique())
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.minorticks_off()
                _panel_letter(ax, letter)
                letter += 1
            ax_t.set_title(f"{sc}\n{m:g} cells per donor")
            if c == 0:
                ax_t.set_ylabel(f"TPR at observed FDR ≤ {a}")
                ax_d.set_ylabel("discoveries at that cutoff")
            if r == len(cells) - 1:
                ax_d.set_xlabel("donors")
    if not cells:
        style.empty_panel(axes[0, 0], "no scenario power results")
    hollow = plt.Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=4)
    band = plt.Rectangle((0, 0), 1, 1, color=style.BAND_COLOR)
    extra = ((hollow, f"fewer than {FEW} discoveries (mean)"), (band, f"0–{FEW} discoveries"))
    style.method_legend(fig, handles, methods, extra, ncol=min(5, max(nc, 2)))
    return style.save(fig, figures_dir, name)


def _fdr_tpr_figure(curves, figures_dir: Path) -> list[Path]:
    scen = _scenarios(curves)
    methods = style.methods_in(curves) if len(curves) else []
    nc = min(3, max(len(scen), 1))
    nr = max(1, -(-len(scen) // nc))
    fig, axes = plt.subplots(nr, nc, figsize=(3.0 * nc + 0.5, 2.9 * nr + 1.2), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")  # fmt: skip
    handles: dict = {}
    for j, sc in enumerate(scen):
        ax = axes.flat[j]
        d = curves[curves["scenario"] == sc]
        s, m = nearest_setting(zip(d["n_donors"], d["cells_per_donor"], strict=True))
        d = d[(d["n_donors"] == s) & (d["cells_per_donor"] == m)]
        for g in _GUIDES:
            ax.axvline(g, color="0.6", lw=0.7, ls="--")
        few = []
        for i, meth in enumerate(methods):
            color = _color(meth, i)
            cur = d[(d["method"] == meth) & (d["point"] == "curve") & (d["k"] >= FEW)]
            if not cur.empty:
                (h,) = ax.plot(cur["fdr"], cur["tpr"], color=color, lw=1)
                handles.setdefault(meth, h)
            bh = d[(d["method"] == meth) & (d["point"] == "bh")]
            shown = bh[bh["k"] >= FEW]
            if ((bh["nominal"] == 0.05) & (bh["k"] < FEW)).any():
                few.append(meth)
            ok = shown["controlled"].astype(str).str.lower() == "true"
            ax.scatter(shown.loc[ok, "fdr"], shown.loc[ok, "tpr"], s=16, color=color, zorder=3)
            ax.scatter(shown.loc[~ok, "fdr"], shown.loc[~ok, "tpr"], s=16, facecolors="white",
                       edgecolors=color, zorder=3)  # fmt: skip
            for r in shown[shown["nominal"] == 0.05].itertuples():
                ax.annotate(f"{r.discoveries_per_replicate:.0f}", (r.fdr, r.tpr), fontsize=6,
                            color=color, xytext=(3, -3), textcoords="offset points")  # fmt: skip
        if few:
            names = textwrap.fill(", ".join(few), 34)
            ax.text(0.03, 0.97, f"BH 0.05 < {FEW} discoveries:\n{names}",
                    transform=ax.transAxes, ha="left", va="top", fontsize=6,
                    color="0.35")  # fmt: skip
        style.sqrt_axis(ax, "x", ticks=(0, 0.05, 0.1, 0.25, 0.5, 1))
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        n_rep = int(d["n_replicates"].max()) if len(d) else 0
        ax.set_title(f"{sc}\n{s} donors × {m} cells, {n_rep} replicate{'s' * (n_rep > 1)} "
                     "pooled")  # fmt: skip
        _panel_letter(ax, j)
        if j % nc == 0:
            ax.set_ylabel("TPR")
        if j // nc == nr - 1:
            ax.set_xlabel("observed FDR (square-root scale)")
    for ax in axes.flat[len(scen) :]:
        ax.set_visible(False)
    if not scen:
        axes.flat[0].set_visible(True)
        style.empty_panel(axes.flat[0], "no scenario power curves")
    filled = plt.Line2D([], [], ls="none", marker="o", color="0.3", ms=4)
    hollow = plt.Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=4)
    style.method_legend(fig, handles, methods,
                        ((filled, "BH 0.01/0.05/0.1: FDR controlled"),
                         (hollow, "BH 0.01/0.05/0.1: FDR exceeded")),
                        ncol=4)  # fmt: skip
    return style.save(fig, figures_dir, OUTPUTS[2])


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw the three figures from ``scenario_power_summary.csv`` and
    ``scenario_power_curves.csv.gz`` (the ``make`` of the :mod:`figures` package)."""
    style.setup()
    summary = read_table(Path(results_dir) / INPUTS[0])
    curves = read_table(Path(results_dir) / INPUTS[1])
    out = _power_figure(summary, 0.05, OUTPUTS[0], figures_dir)
    out += _power_figure(summary, 0.1, OUTPUTS[1], figures_dir)
    out += _fdr_tpr_figure(curves, figures_dir)
    return out
