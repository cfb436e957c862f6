"""pyflashmm: fast linear mixed models from summary statistics, and DESeq2-style NB GLMs,
for differential expression in multi-subject single-cell RNA-seq."""

from __future__ import annotations

from pyflashmm.contrasts import contrast_matrix
from pyflashmm.de import de, to_rank_genes_groups
from pyflashmm.design import Design, design
from pyflashmm.inference import lmmtest, lrt, random_effects, vctest
from pyflashmm.lmm import STATUS_NAMES, ConvergenceWarning, LmmFit, lmm, lmmfit, loglik_score
from pyflashmm.nbglm import NbGlmFit, nbglm, pseudobulk, size_factors
from pyflashmm.simulate import SimulatedData, simulate_rnaseq
from pyflashmm.sumstats import SummaryStats, summary_stats

__version__ = "0.1.0"

__all__ = [
    "STATUS_NAMES",
    "ConvergenceWarning",
    "Design",
    "LmmFit",
    "NbGlmFit",
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
    "pseudobulk",
    "random_effects",
    "simulate_rnaseq",
    "size_factors",
    "summary_stats",
    "to_rank_genes_groups",
    "vctest",
]
