"""DESeq2-style negative-binomial GLM: size factors, dispersions, IRLS, Wald/LRT, pseudobulk."""

from pyflashmm.nbglm.glm import NbGlmFit, nbglm
from pyflashmm.nbglm.pseudobulk import pseudobulk
from pyflashmm.nbglm.size_factors import size_factors

__all__ = ["NbGlmFit", "nbglm", "pseudobulk", "size_factors"]
