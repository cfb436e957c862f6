"""pyflashmm: fast linear mixed models from summary statistics, and DESeq2-style NB GLMs,
for differential expression in multi-subject single-cell RNA-seq."""

from __future__ import annotations

from pyflashmm._contrasts import contrast_matrix
from pyflashmm._design import Design, design
from pyflashmm._distributed import ChunkError
from pyflashmm._frontend.de import LogTransformWarning, PseudoreplicationWarning, de
from pyflashmm._frontend.rank_genes_groups import to_rank_genes_groups
from pyflashmm._lmm.fit import ConvergenceWarning, LmmFit, lmm, lmmfit, loglik_score
from pyflashmm._lmm.inference import lmmtest, lrt, random_effects, vctest
from pyflashmm._lmm.stats import SummaryStats, summary_stats
from pyflashmm._nbglm.fit import NbGlmFit, nbglm
from pyflashmm._nbglm.inference import nbglm_test
from pyflashmm._nbmm.fit import NbmmFit, nbmm
from pyflashmm._nbmm.inference import nbmm_test
from pyflashmm._pseudobulk import pseudobulk
from pyflashmm._simulate import SimulatedData, simulate_rnaseq
from pyflashmm._size_factors import size_factors
from pyflashmm._status import STATUS_NAMES

__version__ = "0.1.0"

__all__ = [
    "STATUS_NAMES",
    "ChunkError",
    "ConvergenceWarning",
    "Design",
    "LmmFit",
    "LogTransformWarning",
    "NbGlmFit",
    "NbmmFit",
    "PseudoreplicationWarning",
    "SimulatedData",
    "SummaryStats",
    "__version__",
    "contrast_matrix",
    "de",
    "design",
    "lmm",
    "lmmfit",
    "lmmtest",
    "lrt",
    "loglik_score",
    "nbglm",
    "nbglm_test",
    "nbmm",
    "nbmm_test",
    "pseudobulk",
    "random_effects",
    "simulate_rnaseq",
    "size_factors",
    "summary_stats",
    "to_rank_genes_groups",
    "vctest",
]
