"""One look for every figure: method names, a colour-blind-safe palette (Okabe–Ito), sizes.

Method ids are the values of the ``method`` column of the results tables; every figure and
table shows them through :data:`METHOD_LABELS` so that a method has one name everywhere.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: method id → the name shown in figures, tables and the report
METHOD_LABELS = {
    "lmm_satterthwaite": "LMM, Satterthwaite df",
    "lmm_residual_df": "LMM, n − p df (FLASHMM)",
    "lm": "Linear model, no subject effect",
    "nbglm_cells": "NB GLM, cells (no subject)",
    "nbglm_pseudobulk": "NB GLM, pseudobulk",
    "lmm_ml": "LMM (ML), Satterthwaite df",
}

#: Okabe–Ito colours, one per method id (black is kept for references and diagonals)
METHOD_COLORS = {
    "lmm_satterthwaite": "#0072B2",
    "lmm_residual_df": "#56B4E9",
    "lm": "#E69F00",
    "nbglm_cells": "#D55E00",
    "nbglm_pseudobulk": "#009E73",
    "lmm_ml": "#CC79A7",
}

#: colours for tools in runtime figures (pyflashmm parts first, then the anchors)
TOOL_COLORS = {
    "pyflashmm_sumstats": "#56B4E9",
    "pyflashmm_lmm": "#0072B2",
    "pyflashmm_nbglm": "#009E73",
    "statsmodels_mixedlm": "#E69F00",
    "flashmm": "#CC79A7",
    "lme4": "#D55E00",
    "deseq2": "#F0E442",
    "glmgampoi": "#999999",
}

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
REFERENCE_COLOR = "black"
BAND_COLOR = "0.85"


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, TOOL_COLORS.get(method, "0.4"))


def setup() -> None:
    """Matplotlib defaults shared by all figures."""
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 200,
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
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


def tool_label(tool: str) -> str:
    return TOOL_LABELS.get(tool, tool)


def tool_color(tool: str) -> str:
    return TOOL_COLORS.get(tool, "0.4")


def comparison_label(comparison: str) -> str:
    return COMPARISON_LABELS.get(comparison, comparison)


def ordered(ids, labels: dict) -> list:
    """``ids`` in the order of ``labels`` (its keys), unknown ids last in sorted order."""
    ids = list(dict.fromkeys(ids))
    known = [k for k in labels if k in ids]
    return known + sorted(i for i in ids if i not in labels)


def method_legend(fig, handles: dict, methods: list, extra: tuple = (), **kw) -> None:
    """``figure_legend`` of the methods drawn (``handles`` by method id, in the order of
    ``methods``), then the ``extra`` (artist, label) pairs."""
    shown = [m for m in methods if m in handles]
    figure_legend(fig, [handles[m] for m in shown] + [h for h, _ in extra],
                  [method_label(m) for m in shown] + [label for _, label in extra],
                  **kw)  # fmt: skip


def methods_in(table) -> list:
    """The method ids of a result table (column ``method``), in the order of the labels."""
    return ordered(table["method"].unique(), METHOD_LABELS)


def empty_panel(ax, text: str) -> None:
    """Mark a panel that has no data (text in the middle, no ticks)."""
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
