"""The NB GLM of many cells fitted gene block by gene block (on the workers of a cluster), with
the numbers of one fit of all genes.

Only the dispersion trend and its prior span genes (stage 4 of :mod:`pyflashmm._nbglm.fit`),
so the fit runs in two rounds over the blocks:

1. :func:`gene_wise_of_block`: each block's gene-wise dispersions and base means (stage 3);
2. :func:`prior_of_blocks`: the trend and the prior variance of the gathered estimates of all
   genes, in gene order (the arrays one fit of all genes builds);
3. :func:`fit_block`: each block's fit and default test with that trend and prior (stages 3
   and 5–7; the gene-wise stage is recomputed rather than held between the rounds).

Independent filtering and BH, which span genes too, are applied by the caller to the gathered
p-values (:func:`pyflashmm._nbglm.inference.independent_filter`).
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np

from pyflashmm._jit import numba_parallel_only
from pyflashmm._nbglm.count_block import GeneBlocks
from pyflashmm._nbglm.fit import (
    NbGlmFit,
    _estimate_size_factors,
    _gene_wise_stage,
    _GeneWiseStage,
    _Options,
    _options,
    _Prior,
    _trend_and_prior,
    _validate,
    check_gene_count,
    fit_and_test,
    nbglm,
)
from pyflashmm._nbglm.layout import design_layout, sample_classes

#: the arguments of :func:`pyflashmm.nbglm` that are not its options (the data, the test's
#: contrast and reduced design: the blocks are tested by the caller's contrasts)
_NOT_OPTIONS = ("counts", "X", "reduced", "contrast", "preset", "allow_non_integer",
                "coef_names", "gene_names")  # fmt: skip


def block_options(preset, kwargs: dict) -> _Options:
    """:func:`pyflashmm.nbglm`'s options from its keyword arguments (its own defaults for
    those not given), checked here before any block is fitted."""
    params = inspect.signature(nbglm).parameters
    names = [k for k in params if k not in _NOT_OPTIONS]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise TypeError(f"nbglm() got unexpected keyword arguments {unknown}")
    return _options(preset, **{k: kwargs.get(k, params[k].default) for k in names})


@numba_parallel_only
def gene_wise_of_block(counts, X, sf, opts: _Options, allow_non_integer: bool = False):
    """(gene-wise dispersions, base means) of the genes of a block that are not all-zero, in
    order (stage 3)."""
    inputs = _validate(counts, X, coef_names=None, gene_names=None,
                       allow_non_integer=allow_non_integer, whole=False)  # fmt: skip
    sf = _estimate_size_factors(inputs, sf)
    layout = inputs.layout
    blocks = GeneBlocks(inputs.Yt, np.flatnonzero(~inputs.all_zero), opts.block_size)
    gw = _gene_wise_stage(blocks, sf, layout, sample_classes(sf, layout), opts)
    return gw.disp, gw.base_mean


def prior_of_blocks(per_block: list, X, opts: _Options) -> _Prior:
    """The trend and prior of all genes from the blocks' :func:`gene_wise_of_block` results
    (in gene order)."""
    disp = np.concatenate([d for d, _ in per_block] + [np.zeros(0)])
    base_mean = np.concatenate([b for _, b in per_block] + [np.zeros(0)])
    check_gene_count(disp.size)
    layout = design_layout(np.asarray(X, dtype=np.float64))
    return _trend_and_prior(_GeneWiseStage(disp, base_mean, []), layout, opts)


@numba_parallel_only
def fit_block(counts, X, sf, opts: _Options, prior: _Prior, *, contrast, gene_names,
              allow_non_integer: bool = False) -> NbGlmFit:  # fmt: skip
    """The fit and default test of a block of genes with the trend and prior of all genes
    (without independent filtering and BH, which the caller applies over all genes)."""
    inputs = _validate(counts, X, coef_names=None, gene_names=gene_names,
                       allow_non_integer=allow_non_integer, whole=False)  # fmt: skip
    opts = replace(opts, size_factors=np.asarray(sf, dtype=np.float64),
                   independent_filtering=False)  # fmt: skip
    return fit_and_test(inputs, opts, contrast, None, prior, warn=False)
