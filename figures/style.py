"""One look for every figure: method names, colours, markers and line styles, sizes, helpers.

Method ids are the values of the ``method`` column of the results tables; every figure and
table shows them through :data:`METHOD_LABELS` so that a method has one name everywhere, and
:data:`METHOD_STYLES` gives each one colour, marker and line style. Methods are grouped by
family (LMM family: blues and purples; NB pseudobulk: greens; NB mixed models: browns;
cell-level methods that take cells as replicates: oranges and reds). Methods run in R are drawn
with open markers. Within a family, two methods that share a hue differ in marker and line
style, so every pair stays distinct in grey scale and for colour-blind readers.

Figures are sized for print (at most about 7.2 in, a full page width, wide) so that the 7–8 pt
fonts set by :func:`setup` are read at that size.
"""

from __future__ import annotations

from pathlib import Path
from string import ascii_lowercase

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

#: full page width (inches) that figures are drawn at
PAGE_WIDTH = 7.2

#: method id → the name shown in figures, tables and the report
METHOD_LABELS = {
    # LMM family (pyflashmm, then the R tools)
    "lmm": "LMM, Kenward–Roger df (pyflashmm default)",
    "lmm_satterthwaite": "LMM, Satterthwaite df",
    "lmm_residual_df": "LMM, n − p df (FLASHMM)",
    "lmm_between_within": "LMM, between–within df",
    "lmm_moderated": "LMM, moderated variances",
    "lmm_ml": "LMM (ML), Satterthwaite df",
    "lmertest": "lmerTest LMM (R, gene subset)",
    "dream": "dream-style weighted LMM, pseudobulk",
    # NB pseudobulk
    "pseudobulk": "pseudobulk NB GLM, DESeq2-style (pyflashmm)",
    "nbglm_pseudobulk": "NB GLM, pseudobulk",
    "deseq2_r": "DESeq2 (R, pseudobulk)",
    "edger_ql": "edgeR-QL (R, pseudobulk)",
    "limma_voom": "limma-voom (R, pseudobulk)",
    # NB mixed models on cells
    "nbmm": "NB mixed model, cells (pyflashmm)",
    "glmmtmb": "glmmTMB NB GLMM (R, gene subset)",
    # cells as replicates (pseudoreplication)
    "lm": "Linear model, no subject effect",
    "nbglm_cells": "NB GLM, cells (no subject)",
    "wilcoxon": "Wilcoxon rank-sum, cells",
}

#: method id → (colour, marker, line style, open marker)
METHOD_STYLES = {
    "lmm": ("#0072B2", "o", "-", False),
    "lmm_satterthwaite": ("#56B4E9", "s", "--", False),
    "lmm_residual_df": ("#332288", "^", ":", False),
    "lmm_between_within": ("#7B5EA7", "D", "-.", False),
    "lmm_moderated": ("#CC79A7", "v", (0, (5, 1.5, 1, 1.5, 1, 1.5)), False),
    "lmm_ml": ("#AA4499", "P", (0, (4, 1, 1, 1)), False),
    "lmertest": ("#0072B2", "h", "--", True),
    "dream": ("#332288", "p", "-.", True),
    "pseudobulk": ("#009E73", "s", "-", False),
    "nbglm_pseudobulk": ("#009E73", "v", "--", False),
    "deseq2_r": ("#117733", "D", "--", True),
    "edger_ql": ("#44AA99", "^", "-.", True),
    "limma_voom": ("#999933", "v", ":", True),
    "nbmm": ("#8C510A", "X", "-", False),
    "glmmtmb": ("#8C510A", "P", "--", True),
    "lm": ("#E69F00", "^", "--", False),
    "nbglm_cells": ("#D55E00", "D", "-", False),
    "wilcoxon": ("#EE3377", "*", ":", False),
}

#: colours by method id (from :data:`METHOD_STYLES`)
METHOD_COLORS = {m: s[0] for m, s in METHOD_STYLES.items()}

#: tool id (the ``tool`` column of ``runtime.csv``) → the name shown in figures
TOOL_LABELS = {
    "pyflashmm_sumstats": "pyflashmm, summary statistics",
    "pyflashmm_lmm": "pyflashmm LMM (from summary statistics)",
    "pyflashmm_nbglm": "pyflashmm NB GLM, pseudobulk",
    "statsmodels_mixedlm": "statsmodels MixedLM",
    "flashmm": "FLASHMM (R)",
    "lme4": "lme4 (R)",
    "deseq2": "DESeq2 (R)",
    "glmgampoi": "glmGamPoi (R)",
}

#: tool id → (colour, marker, line style); measured and extrapolated points are told apart by
#: filled and open markers on dotted segments (:mod:`figures.fig_runtime`), so no tool style
#: uses open markers or a dotted line
TOOL_STYLES = {
    "pyflashmm_sumstats": ("#56B4E9", "s", "--"),
    "pyflashmm_lmm": ("#0072B2", "o", "-"),
    "pyflashmm_nbglm": ("#009E73", "^", "-"),
    "statsmodels_mixedlm": ("#E69F00", "D", "-."),
    "flashmm": ("#CC79A7", "v", "-"),
    "lme4": ("#D55E00", "P", "--"),
    "deseq2": ("#117733", "X", (0, (3, 1, 1, 1, 1, 1))),
    "glmgampoi": ("#6F6F6F", "*", "-."),
}
TOOL_COLORS = {t: s[0] for t, s in TOOL_STYLES.items()}
#: tools that run in R (their memory is the whole R process)
R_TOOLS = ("flashmm", "lme4", "deseq2", "glmgampoi")

#: scenario id (``scenario`` column of the scenario tables) → shown name
SCENARIO_LABELS = {
    "flashmm_reference": "FLASHMM model",
    "droplet": "droplet (baseline)",
    "gamma_donors": "gamma donor effects",
    "unbalanced_arms": "unbalanced arms",
    "donor_by_type": "donor × cell type",
    "average_contrast": "average contrast",
}

#: comparison id (the ``comparison`` column of the agreement tables) → shown name
COMPARISON_LABELS = {
    "lmm_vs_statsmodels": "LMM vs statsmodels",
    "lmm_vs_lme4": "LMM vs lme4",
    "lmm_vs_lmertest": "LMM vs lmerTest",
    "nbglm_vs_deseq2": "NB GLM vs DESeq2",
}

#: colours for the agreement comparisons (Okabe–Ito)
COMPARISON_COLORS = {
    "lmm_vs_statsmodels": "#E69F00",
    "lmm_vs_lme4": "#0072B2",
    "lmm_vs_lmertest": "#CC79A7",
    "nbglm_vs_deseq2": "#009E73",
}

#: power scope id → shown name
SCOPE_LABELS = {
    "within_type": "DE within one cell type",
    "across_types": "DE across cell types",
}

#: axis labels that define their quantity (the older tables call donors "subjects")
DONORS_LABEL = "number of donors (subjects)"
CELLS_LABEL = "cells per donor"
SIGMA_LABEL = "donor variance σ_b²"

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_FALLBACK_LINES = ("-", "--", "-.", ":")
REFERENCE_COLOR = "black"
BAND_COLOR = "0.85"


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, TOOL_COLORS.get(method, "0.4"))


def _fallback(ids: dict, key: str) -> int:
    return sum(map(ord, key)) + len(ids)


def method_style(method: str, *, ms: float = 3.5, lw: float = 1.0) -> dict:
    """Keyword arguments of ``Axes.plot`` for ``method``: colour, marker, line style and, for
    the R tools, an open marker (white face). Unknown ids get grey and a marker and line style
    derived from their name."""
    if method in METHOD_STYLES:
        color, marker, ls, open_ = METHOD_STYLES[method]
    else:
        k = _fallback(METHOD_STYLES, method)
        color, marker, ls, open_ = "0.45", MARKERS[k % 8], _FALLBACK_LINES[k % 4], False
    ms = ms * 1.4 if marker in ("*", "+", "x") else ms  # thin markers look smaller
    return {"color": color, "marker": marker, "ls": ls, "ms": ms, "lw": lw,
            "mfc": "white" if open_ else color, "mec": color,
            "mew": 0.9 if open_ else 0.0}  # fmt: skip


def method_handle(method: str, **kw) -> plt.Line2D:
    """A legend entry (line and marker) for ``method``."""
    return plt.Line2D([], [], **(method_style(method) | kw))


def tool_label(tool: str) -> str:
    return TOOL_LABELS.get(tool, tool)


def tool_color(tool: str) -> str:
    return TOOL_COLORS.get(tool, "0.4")


def tool_style(tool: str, *, ms: float = 3.5, lw: float = 1.0) -> dict:
    """Keyword arguments of ``Axes.plot`` for a runtime tool (filled marker)."""
    if tool in TOOL_STYLES:
        color, marker, ls = TOOL_STYLES[tool]
    else:
        k = _fallback(TOOL_STYLES, tool)
        color, marker, ls = "0.45", MARKERS[k % 8], _FALLBACK_LINES[k % 4]
    return {"color": color, "marker": marker, "ls": ls, "ms": ms, "lw": lw, "mec": color}


def scenario_label(scenario: str) -> str:
    return SCENARIO_LABELS.get(scenario, scenario)


def scenarios_in(table) -> list:
    """The scenario ids of a scenario table (column ``scenario``), in the order of the
    labels."""
    return ordered(table["scenario"].unique(), SCENARIO_LABELS)


def comparison_label(comparison: str) -> str:
    return COMPARISON_LABELS.get(comparison, comparison)


def setup() -> None:
    """Matplotlib defaults shared by all figures (sizes for print at :data:`PAGE_WIDTH`)."""
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 250,
            "font.size": 8,
            "axes.titlesize": 7.5,
            "axes.labelsize": 7.5,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "legend.fontsize": 7,
            "legend.title_fontsize": 7.5,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.linewidth": 0.7,
            "xtick.major.width": 0.7,
            "ytick.major.width": 0.7,
            "pdf.fonttype": 42,
        }
    )


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf to ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(
            p, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None
        )
    plt.close(fig)
    return paths


def ordered(ids, labels: dict) -> list:
    """``ids`` in the order of ``labels`` (its keys), unknown ids last in sorted order."""
    ids = list(dict.fromkeys(ids))
    known = [k for k in labels if k in ids]
    return known + sorted(i for i in ids if i not in labels)


def dodge(n: int, gap: float = 0.5) -> np.ndarray:
    """Multiplicative x offsets (for a log axis) that spread ``n`` methods over at most half of
    ``gap`` (the smallest log-ratio between neighbouring x values)."""
    w = min(0.018 * n, 0.25 * gap)
    return np.exp(np.linspace(-w, w, max(n, 1)))


def method_legend(fig, handles: dict, methods: list, extra: tuple = (), **kw) -> None:
    """``figure_legend`` of the methods drawn (``handles`` by method id, in the order of
    ``methods``), then the ``extra`` (artist, label) pairs; a smaller font past 9 methods."""
    shown = [m for m in methods if m in handles]
    if len(shown) > 9:
        kw.setdefault("fontsize", 6.5)
    figure_legend(fig, [handles[m] for m in shown] + [h for h, _ in extra],
                  [method_label(m) for m in shown] + [label for _, label in extra],
                  **kw)  # fmt: skip


def methods_in(table) -> list:
    """The method ids of a result table (column ``method``), in the order of the labels."""
    return ordered(table["method"].unique(), METHOD_LABELS)


def empty_panel(ax, text: str) -> None:
    """Mark the one panel of a figure whose table has no data at all (text in the middle, no
    ticks). Grids lay out only the panels that have data (:func:`panel_grid`)."""
    ax.set_axis_on()
    ax.set_visible(True)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def figure_legend(fig, handles: list, labels: list, *, ncol: int = 3, **kw) -> None:
    """One legend for the whole figure, above the panels (nothing when there is nothing).

    The figure must use ``layout="constrained"``; ``kw`` goes to ``Figure.legend``.
    """
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncol=min(ncol, len(handles)),
                   frameon=False, **kw)  # fmt: skip


def letter(k: int) -> str:
    """The k-th panel letter: a … z, then aa, ab, …"""
    return ascii_lowercase[k] if k < 26 else letter(k // 26 - 1) + ascii_lowercase[k % 26]


def panel_letters(axes, start: int = 0) -> list:
    """Bold letters a, b, c … at the top left of each visible panel of ``axes`` (in the order
    given: row by row for a grid), outside the axes, left of the title. Returns the texts
    (each with ``gid="panel_letter"``)."""
    out = []
    k = start
    for ax in np.ravel(axes):
        if ax is None or not ax.get_visible() or not ax.axison:
            continue
        out.append(ax.annotate(letter(k), xy=(0, 1), xycoords="axes fraction", xytext=(-14, 6),
                               textcoords="offset points", ha="right", va="bottom",
                               fontweight="bold", fontsize=9, gid="panel_letter"))  # fmt: skip
        k += 1
    return out


def panel_grid(present, nr: int, nc: int, *, width: float, height: float, **kw):
    """``plt.subplots(nr, nc)`` (constrained layout, ``squeeze=False``) with only the panels
    for which ``present(r, c)`` is true shown; the others are hidden, never drawn empty.
    ``width``/``height`` are per panel (inches); returns ``(fig, axes)``."""
    fig, axes = plt.subplots(nr, nc, figsize=(width * nc + 0.5, height * nr + 0.9),
                             squeeze=False, layout="constrained", **kw)  # fmt: skip
    for r in range(nr):
        for c in range(nc):
            if not present(r, c):
                axes[r, c].set_visible(False)
    return fig, axes


def wilson_interval(k, n, z: float = 1.959963984540054):
    """Wilson score 95% interval of k/n (NaN where n = 0); vectorised."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    ok = n > 0
    return (np.where(ok, np.clip(centre - half, 0, 1), np.nan),
            np.where(ok, np.clip(centre + half, 0, 1), np.nan))  # fmt: skip


#: upper limit of the linear type-I error axis per nominal α (rates above it are clipped)
RATE_LIMITS = {0.05: 0.15, 0.01: 0.05, 0.001: 0.01}


def rate_limit(alpha: float) -> float:
    """The top of the type-I error axis at level ``alpha`` (3 α at 0.05, 5 α at 0.01)."""
    for a, top in RATE_LIMITS.items():
        if np.isclose(a, alpha):
            return top
    return 5 * alpha


def rate_axis(ax, top: float) -> None:
    """A linear proportion axis from 0 to ``top``, ticks in percent."""
    ax.set_ylim(0, top)
    step = 0.05 if top > 0.1 else (0.01 if top > 0.02 else 0.002)
    ax.set_yticks(np.arange(0, top + step / 2, step))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0 if step >= 0.01 else 1))


def plot_rates(ax, x, rate, low, high, *, top: float, method: str, stack: dict, base=None):
    """Rates with their interval on a linear axis clipped at ``top``.

    Points at or below ``top`` are drawn with error bars and joined; a rate above ``top`` is
    drawn as an up-arrow on the top edge with its value written above it (``gid="clipped"``),
    stacked above the values of other methods at the same x (``stack``: x → count, shared by
    the calls of one panel; ``base``: the x before dodging, the key of ``stack``)."""
    x, rate = np.asarray(x, float), np.asarray(rate, float)
    base = x if base is None else np.asarray(base, float)
    low, high = np.asarray(low, float), np.asarray(high, float)
    kw = method_style(method)
    inside = rate <= top
    y = np.where(inside, rate, np.nan)
    err = np.vstack([np.clip(rate - low, 0, None), np.clip(high - rate, 0, None)])
    err[:, ~inside] = 0
    ax.errorbar(x, y, yerr=err, elinewidth=0.7, capsize=1.5, ecolor=kw["color"], **kw)
    for xi, bi, ri in zip(x[~inside], base[~inside], rate[~inside], strict=True):
        if not np.isfinite(ri):
            continue
        ax.plot([xi], [top], ls="none", marker="^", ms=4.5, color=kw["color"],
                mec=kw["color"], clip_on=False, zorder=4)  # fmt: skip
        key = float(bi)
        k = stack.get(key, 0)
        stack[key] = k + 1
        ax.annotate(f"{ri:.0%}" if ri >= 0.1 else f"{ri:.1%}", xy=(xi, top), xytext=(0, 5 + 7 * k),
                    textcoords="offset points", ha="center", va="bottom", fontsize=6,
                    color=kw["color"], gid="clipped", annotation_clip=False)  # fmt: skip


def clipped_pad(stack: dict) -> float:
    """Title pad (points) that leaves room for the clipped values of :func:`plot_rates`."""
    n = max(stack.values(), default=0)
    return 4.0 + (7 * n + 5 if n else 0)


def aligned_titles(axes, titles: dict) -> None:
    """Set ``titles`` ((row, col) → (text, pad)) with one pad per row (the largest), so that
    the titles of a row stay aligned."""
    for (r, c), (text, _) in titles.items():
        pad = max(p for (r2, _), (_, p) in titles.items() if r2 == r)
        axes[r, c].set_title(text, pad=pad)


def sqrt_axis(ax, which: str = "y", ticks=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1)) -> None:
    """Square-root scale for a proportion axis (spreads the small rates near 0).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The panel.
    which : {"x", "y"}
        The axis to rescale.
    ticks : sequence of float
        Tick positions (proportions).
    """
    fwd = (lambda v: np.sqrt(np.clip(v, 0, None)), np.square)
    if which == "y":
        ax.set_yscale("function", functions=fwd)
        ax.set_yticks(list(ticks), [f"{t:g}" for t in ticks])
    else:
        ax.set_xscale("function", functions=fwd)
        ax.set_xticks(list(ticks), [f"{t:g}" for t in ticks])
