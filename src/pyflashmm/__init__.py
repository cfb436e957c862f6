"""pyflashmm: fast linear mixed models from summary statistics, and DESeq2-style NB GLMs,
for differential expression in multi-subject single-cell RNA-seq."""

from __future__ import annotations

__version__ = "0.1.0"

from pyflashmm.nbglm import NbGlmFit, nbglm, pseudobulk, size_factors

__all__: list[str] = ["__version__", "NbGlmFit", "nbglm", "pseudobulk", "size_factors"]
