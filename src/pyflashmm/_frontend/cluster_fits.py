"""The cell-level NB fits of :func:`pyflashmm.de` on a Dask cluster, one gene block per task
(:mod:`pyflashmm._gene_blocks`), with the tables of the blocks put together here.

Every gene sees the same counts, design and size factors as in one process, so its fit and
test are bitwise the same; what spans genes (BH, DESeq2's independent filtering, per
contrast) is applied to the gathered table, as in one process. Options are checked here
before any pass over the counts.
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm._frontend.inputs import CellData
from pyflashmm._gene_blocks import fit_blocks, poscounts_on_cluster, totals_on_cluster
from pyflashmm._multitest import bh_adjust
from pyflashmm._nbglm.blockwise import (
    block_options,
    fit_block,
    gene_wise_of_block,
    prior_of_blocks,
)
from pyflashmm._nbglm.fit import check_gene_count, warn_glm_not_converged
from pyflashmm._nbglm.inference import independent_filter, nbglm_test
from pyflashmm._nbmm.fit import check_options, failed_fits, nbmm, warn_nbmm_not_converged
from pyflashmm._nbmm.inference import nbmm_test
from pyflashmm._size_factors import METHODS as SIZE_FACTOR_METHODS
from pyflashmm._size_factors import (
    given_size_factors,
    normed_sum_rescaled,
    poscounts_rescaled,
    size_factors_checked,
)


def check_cells_have_counts(totals: np.ndarray, obs: pd.DataFrame, where: str) -> None:
    """Refuse cells without any count (a cell-level NB model gives them no size factor),
    naming the first few."""
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        names = ", ".join(repr(str(obs.index[i])) for i in empty[:5])
        raise ValueError(
            f"data: {empty.size} cells have no counts at all in {where} (first: {names}): a "
            "cell without counts has no size factor; remove them first (e.g. "
            "sc.pp.filter_cells(adata, min_counts=1))"
        )


def cluster_size_factors(client, cells: CellData, obs: pd.DataFrame, size_factors,
                         chunk_size: int, *, cells_need_counts: bool):  # fmt: skip
    """(size factors, positive counts per gene) of the cells: computed by the workers in
    passes over cell chunks (``"poscounts"``, ``"normed_sum"``), or here for counts held in
    memory (any method), or checked when given. ``cells_need_counts``: refuse cells without
    counts even when the factors are given."""
    n, G = cells.shape
    if isinstance(size_factors, str):
        if size_factors not in SIZE_FACTOR_METHODS:
            raise ValueError(
                f"size_factors must be one of {SIZE_FACTOR_METHODS} or an array, got "
                f"{size_factors!r}"
            )
        cells_need_counts = True
    else:
        size_factors = given_size_factors(size_factors, n)
    Y = cells.counts
    if isinstance(Y, np.ndarray) or sp.issparse(Y):
        Yr = sp.csr_matrix(Y, dtype=np.float64)
        nnz = np.bincount(Yr.indices[Yr.data > 0], minlength=G)
        if cells_need_counts:
            check_cells_have_counts(np.asarray(Yr.sum(axis=1)).ravel(), obs, cells.where)
        if isinstance(size_factors, str):
            return size_factors_checked(Yr, size_factors), nnz
        return size_factors, nnz
    method = size_factors if isinstance(size_factors, str) else None
    if method in ("ratio", "iterate"):
        raise ValueError(
            f"size_factors={size_factors!r}: on a Dask cluster, counts that the workers read "
            "get 'poscounts' (DESeq2's for sparse counts) or 'normed_sum' size factors; pass "
            "one of those or the factors as an array"
        )
    if method == "poscounts":
        raw, totals, nnz = poscounts_on_cluster(client, Y, n, G, chunk_size, cells.where)
    else:  # the totals and the genes' positive counts need one pass only
        totals, nnz = totals_on_cluster(client, Y, n, G, chunk_size, cells.where)
    if cells_need_counts:
        check_cells_have_counts(totals, obs, cells.where)
    if method == "poscounts":
        return poscounts_rescaled(raw), nnz
    if method == "normed_sum":
        return normed_sum_rescaled(totals), nnz
    return size_factors, nnz


def _bh(part: pd.DataFrame) -> np.ndarray:
    return bh_adjust(part["p_value"].to_numpy())


def by_contrast(tables: list[pd.DataFrame], adjust=_bh) -> pd.DataFrame:
    """The blocks' tables (each one row per gene and contrast, contrasts in blocks) as one:
    contrasts in blocks, genes in order, ``adj_p_value`` by ``adjust`` (BH) over all genes
    per contrast."""
    contrasts = list(pd.unique(tables[0]["contrast"]))
    parts = []
    for c in contrasts:
        part = pd.concat([t[t["contrast"] == c] for t in tables], ignore_index=True)
        part["adj_p_value"] = adjust(part)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out.attrs.update(tables[0].attrs)
    return out


# ----------------------------------------------------------------------------- nbmm


def _nbmm_block(block, bounds, names, X, groups, sf, options):
    """Fit and test the NB mixed model on one gene block (a task): (table, failed fits)."""
    a, b = bounds
    fit = nbmm(block, X, groups, size_factors=sf, gene_names=names[a:b], progress=False,
               warn=False, **options["fit"])  # fmt: skip
    table = nbmm_test(fit, options["contrast"], test=options["test"], df=options["df"],
                      progress=False)  # fmt: skip
    return table, failed_fits(fit.status)


def nbmm_on_cluster(client, cells: CellData, obs, X, groups, *, contrast, test, df, reml,
                    chunk_size, kwargs) -> pd.DataFrame:  # fmt: skip
    """:func:`pyflashmm.de`'s NB mixed model fitted block by block on the cluster's workers."""
    options = dict(kwargs, reml=bool(reml))
    size_factors = options.pop("size_factors", "poscounts")
    warn = options.pop("warn", True)
    params = inspect.signature(nbmm).parameters
    unknown = sorted(set(options) - set(params) - {"counts", "X", "groups", "gene_names"})
    if unknown:
        raise TypeError(f"nbmm() got unexpected keyword arguments {unknown}")
    checked = ("max_iter", "tol", "method", "n_agq", "reml", "progress")
    check_options(*(options.get(k, params[k].default) for k in checked))
    sf, nnz = cluster_size_factors(client, cells, obs, size_factors, chunk_size,
                                   cells_need_counts=False)  # fmt: skip
    n, G = cells.shape
    shared = (X, np.asarray(groups), sf,  # X a DataFrame: its columns name the coefficients
              {"fit": options, "contrast": contrast, "test": test, "df": df})  # fmt: skip
    out = fit_blocks(client, cells.counts, n, G, _nbmm_block, shared, chunk_size=chunk_size,
                     where=cells.where, gene_nnz=nnz, gene_names=cells.gene_names)  # fmt: skip
    n_bad = sum(bad for _, bad in out)
    if n_bad and warn:
        warn_nbmm_not_converged(n_bad, G, stacklevel=5)
    return by_contrast([table for table, _ in out])


# ----------------------------------------------------------------------------- nbglm


def _nbglm_gene_wise(block, bounds, names, X, sf, opts, allow_non_integer):
    """Round 1 of the NB GLM on one gene block (a task): gene-wise dispersions, base means."""
    return gene_wise_of_block(block, X, sf, opts, allow_non_integer)


def _nbglm_block(block, bounds, names, X, sf, opts, allow_non_integer, prior, contrasts):
    """Round 2 on one gene block (a task): the fit with the trend and prior of all genes, its
    tests (adjusted later) and the number of genes whose GLM did not converge."""
    a, b = bounds
    fit = fit_block(block, X, sf, opts, prior, contrast=dict([next(iter(contrasts.items()))]),
                    gene_names=names[a:b], allow_non_integer=allow_non_integer)  # fmt: skip
    table = nbglm_test(fit, contrasts, independent_filtering=False)
    return table, int(np.sum(~fit.converged[~fit.all_zero]))


def nbglm_on_cluster(client, cells: CellData, obs, X, contrasts: dict, *, chunk_size,
                     kwargs) -> tuple[pd.DataFrame, str]:  # fmt: skip
    """:func:`pyflashmm.de`'s cell-level NB GLM fitted block by block on the workers, in two
    rounds (:mod:`pyflashmm._nbglm.blockwise`); returns the table and the test."""
    options = {k: v for k, v in kwargs.items() if v is not None}
    allow_non_integer = bool(options.pop("allow_non_integer", False))
    opts = block_options("single_cell", options)
    sf, nnz = cluster_size_factors(client, cells, obs, opts.size_factors, chunk_size,
                                   cells_need_counts=True)  # fmt: skip
    check_gene_count(int(np.count_nonzero(nnz)))
    n, G = cells.shape
    run = dict(chunk_size=chunk_size, where=cells.where, gene_nnz=nnz,
               gene_names=cells.gene_names)  # fmt: skip
    rounds = fit_blocks(client, cells.counts, n, G, _nbglm_gene_wise,
                        (X, sf, opts, allow_non_integer), **run)  # fmt: skip
    prior = prior_of_blocks(rounds, X, opts)
    shared = (X, sf, opts, allow_non_integer, prior, contrasts)
    out = fit_blocks(client, cells.counts, n, G, _nbglm_block, shared, **run)
    n_bad = sum(bad for _, bad in out)
    if n_bad:
        warn_glm_not_converged(n_bad, stacklevel=5)

    def adjust(part: pd.DataFrame) -> np.ndarray:
        p = part["p_value"].to_numpy()
        if not opts.independent_filtering:
            return bh_adjust(p)
        return independent_filter(part["base_mean"].to_numpy(), p, opts.alpha)[0]

    return by_contrast([table for table, _ in out], adjust), opts.test
