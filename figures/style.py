"""One look for every figure: method names, a colour-blind-safe palette (Okabe–Ito), sizes.

Method ids are the values of the ``method`` column of the results tables; every figure and
table shows them through :data:`METHOD_LABELS` so that a method has one name everywhere.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

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
