"""The negative-binomial mixed model with a donor random intercept: ``nbmm`` fits it per gene.

Model (gene g, cell i of donor j): y_ij ~ NB(μ_ij, α_g), Var = μ + αμ² (the NB GLM's α),
ln μ_ij = x_ijᵀβ_g + ln s_ij + b_j, b_j ~ N(0, σ_g²). The marginal likelihood is the Laplace
approximation that glmmTMB (``family = nbinom2``, ``offset(log(s))``) maximises, and the
maximum is found per gene by Newton steps on (β, ln σ², ln θ), θ = 1/α
(:mod:`pyflashmm._kernels.nbmm` has the formulas).

Cells of one donor sharing a design row and a size factor form a class: the kernel sums over
classes (all cells) and over the non-zero counts only; the count matrix is read as CSR (a
sparse input is never densified; a dense one is converted to sparse once).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from pyflashmm import _status
from pyflashmm._checks import check_full_rank
from pyflashmm._jit import numba_parallel_only
from pyflashmm._kernels import nbmm as _k
from pyflashmm._kernels import nbmm_reml as _kr
from pyflashmm._lmm.fit import ConvergenceWarning
from pyflashmm._nbglm.counts_input import as_counts
from pyflashmm._nbglm.layout import row_labels
from pyflashmm._nbmm.agq import agq_refit, check_method
from pyflashmm._size_factors import METHODS as SIZE_FACTOR_METHODS
from pyflashmm._size_factors import given_size_factors, size_factors_checked
from pyflashmm._status import STATUS_NAMES


@dataclass(frozen=True)
class NbmmData:
    """What a refit of the same genes needs (the likelihood-ratio test's reduced models).

    Attributes
    ----------
    counts : genes × cells CSR matrix of the counts (float64, sorted indices).
    groups : donor code of every cell (0 … J − 1, the order of ``NbmmFit.group_names``).
    max_iter, tol : the fit's Newton options.
    n_agq : quadrature nodes of the likelihood (1: Laplace).
    reml : whether the fit is REML (:mod:`pyflashmm._kernels.nbmm_reml`).
    """

    counts: sp.csr_matrix
    groups: np.ndarray
    max_iter: int
    tol: float
    n_agq: int = 1
    reml: bool = False


@dataclass(frozen=True)
class NbmmFit:
    """Result of :func:`nbmm`; arrays are gene-major (length G, or G×p, G×P×P).

    Attributes
    ----------
    coef, se : β on the natural-log scale and its standard errors (G×p), from the inverse of
        the negative Hessian of the Laplace log-likelihood in (β, ln σ², ln α). REML: β is the
        joint inner mode at the REML estimate of (σ², α) and its covariance glmmTMB's REML
        ``vcov`` (see ``reml``).
    sigma2 : the donor variance σ² (0 at the boundary, status ``boundary``).
    dispersion : α (Var = μ + αμ², as :func:`pyflashmm.nbglm`); θ = 1/α is glmmTMB's.
    log_sigma2_se, log_dispersion_se : standard errors of ln σ² (NaN at the boundary) and ln α.
    cov : (−∇²L)⁻¹ in (β, ln σ², ln α), G × (p+2) × (p+2). REML: the (ln σ², ln α) block is
        the inverse negative Hessian of the REML log-likelihood in those two, the β block
        S⁻¹ + D V Dᵀ and the cross block D V (S the Schur complement of the joint inner
        Hessian, D = dβ̂/d(ln σ², ln α), V the variance block), as glmmTMB's ``vcov(full=TRUE)``.
    loglik : the Laplace log-likelihood (glmmTMB's ``logLik``); REML: the REML
        log-likelihood (the Laplace approximation of the integral over β and the donor
        intercepts, glmmTMB's ``logLik`` with ``REML = TRUE``).
    converged : status ``ok`` or ``boundary``.
    status : per-gene status name (:data:`pyflashmm.STATUS_NAMES`): ``ok``, ``boundary``
        (σ² or α held at 0), ``max_iter`` and ``separation`` (a diverging coefficient: the
        counts separate design rows; both keep the last iterate, and have no test),
        ``line_search_failed``, ``not_positive_definite``, ``all_zero`` or ``one_group``
        (every non-zero count in one donor); no fit (NaN) for the last four.
    n_iter : outer Newton iterations.
    modes : the donor intercepts b̂_j at the estimate (conditional modes, G × donors).
    base_mean : mean of the normalised counts y/s per gene (as DESeq2's baseMean).
    size_factors, X, coef_names, gene_names, group_names : the inputs as used.
    data : the counts and options a refit needs (:class:`NbmmData`).
    n_agq : quadrature nodes of the likelihood (1: Laplace).
    reml : True for a REML fit (``nbmm(..., reml=True)``).
    """

    coef: np.ndarray
    se: np.ndarray
    sigma2: np.ndarray
    dispersion: np.ndarray
    log_sigma2_se: np.ndarray
    log_dispersion_se: np.ndarray
    cov: np.ndarray
    loglik: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    size_factors: np.ndarray
    X: np.ndarray
    coef_names: tuple
    gene_names: tuple
    group_names: tuple
    modes: np.ndarray = field(repr=False)
    base_mean: np.ndarray = field(default=None, repr=False)
    data: NbmmData | None = field(default=None, repr=False)
    n_agq: int = 1
    reml: bool = False

    def to_frame(self) -> pd.DataFrame:
        """One row per gene: ``coef_<name>`` and ``se_<name>`` per coefficient, base_mean,
        sigma2, dispersion, loglik, converged, status, n_iter."""
        cols = {"variable": list(self.gene_names)}
        for a, name in enumerate(self.coef_names):
            cols[f"coef_{name}"] = self.coef[:, a]
            cols[f"se_{name}"] = self.se[:, a]
        cols.update(
            base_mean=self.base_mean,
            sigma2=self.sigma2,
            dispersion=self.dispersion,
            loglik=self.loglik,
            converged=self.converged,
            status=self.status,
            n_iter=self.n_iter,
        )
        return pd.DataFrame(cols)


def _names(obj, k, prefix):
    cols = getattr(obj, "columns", None)
    if cols is not None:
        return tuple(str(c) for c in cols)
    return tuple(f"{prefix}{i}" for i in range(k))


def _validate(counts, X, groups, size_factors, allow_non_integer, gene_names):
    """Counts (CSR or dense float64), design, group codes, size factors, names."""
    Y = as_counts(counts, allow_non_integer=allow_non_integer)
    m, G = Y.shape
    try:
        Xa = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"X must be numeric (a design matrix), got {type(X).__name__}") from exc
    if Xa.ndim != 2 or Xa.shape[0] != m:
        raise ValueError(f"X must be 2-D with {m} rows (one per cell), got shape {Xa.shape}")
    if not np.all(np.isfinite(Xa)):
        raise ValueError("X contains NaN or infinite values")
    p = Xa.shape[1]
    if p == 0:
        raise ValueError("X has no columns")
    coef_names = _names(X, p, "x")
    check_full_rank(Xa.T @ Xa, coef_names)
    grp = np.asarray(groups)
    if grp.ndim != 1 or grp.shape[0] != m:
        raise ValueError(
            f"groups must be 1-D with {m} entries (one donor per cell), got shape {grp.shape}: "
            "the NB mixed model has one random intercept (crossed or nested random effects "
            "are not supported)"
        )
    if pd.isna(grp).any():
        raise ValueError("groups contains missing values")
    levels, code = np.unique(grp.astype(str) if grp.dtype == object else grp, return_inverse=True)
    if levels.size < 2:
        raise ValueError("groups has fewer than 2 levels: no donor variance can be estimated")
    if isinstance(size_factors, str):
        if size_factors not in SIZE_FACTOR_METHODS:
            raise ValueError(
                f"size_factors must be one of {SIZE_FACTOR_METHODS} or an array, "
                f"got {size_factors!r}"
            )
        sf = size_factors_checked(Y, size_factors)
    else:
        sf = given_size_factors(size_factors, m)
    if gene_names is None:
        gene_names = _names(counts, G, "gene")
    gene_names = tuple(str(g) for g in gene_names)
    if len(gene_names) != G:
        raise ValueError(f"gene_names has {len(gene_names)} entries for {G} genes")
    return Y, Xa, code.astype(np.int64), tuple(str(v) for v in levels), sf, coef_names, gene_names


def cell_classes(X, group_code, sf, n_groups):
    """Classes of cells sharing (donor, design row, size factor), sorted by donor.

    Returns the class of every cell, the donor offsets into the classes (n_groups + 1), and per
    class its design row (ncls × p), ln s and number of cells.
    """
    lab, _ = row_labels(X)
    order = np.lexsort((sf, lab, group_code))
    g, r, s = group_code[order], lab[order], sf[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (g[1:] != g[:-1]) | (r[1:] != r[:-1]) | (s[1:] != s[:-1])
    cls = np.empty(order.size, np.int64)
    cls[order] = np.cumsum(first) - 1
    ncls = int(first.sum())
    ncl = np.bincount(cls, minlength=ncls).astype(np.float64)
    rep = order[first]  # one cell per class
    Xc = np.ascontiguousarray(X[rep], dtype=np.float64)
    lsc = np.log(sf[rep])
    doff = np.zeros(n_groups + 1, np.int64)
    doff[1:] = np.cumsum(np.bincount(group_code[rep], minlength=n_groups))
    return cls, doff, Xc, lsc, ncl


def nbmm(
    counts,
    X,
    groups,
    *,
    size_factors="poscounts",
    gene_names=None,
    allow_non_integer: bool = False,
    max_iter: int = 100,
    tol: float = 1e-10,
    warn: bool = True,
    method: str = "laplace",
    n_agq: int | None = None,
    reml: bool = False,
    progress: bool | None = None,
) -> NbmmFit:
    """Fit the NB mixed model with a donor random intercept to every gene (Laplace, as glmmTMB).

    Model, for gene g and cell i of donor j: y_ij ~ NB(μ_ij, α_g) with Var = μ + αμ²,
    ln μ_ij = x_ijᵀβ_g + ln s_i + b_j, b_j ~ N(0, σ_g²). The marginal likelihood
    ∏_j ∫ ∏_i NB(y_ij; μ_ij(b), α) φ(b; 0, σ²) db is approximated per donor by Laplace's method
    at the mode b̂_j (glmmTMB's ``family = nbinom2`` with ``offset(log(s))``) and maximised over
    (β, ln σ², ln α) by Newton steps. β is the conditional (donor-specific) effect on ln μ; with a
    random intercept and a log link it is also the ratio of the marginal means.

    Parameters
    ----------
    counts : array_like or scipy.sparse matrix, cells × genes
        Counts (integers unless ``allow_non_integer``); a sparse matrix is read as CSR, never
        densified.
    X : array_like or DataFrame, cells × p
        Fixed-effects design (full column rank; include the intercept column), e.g.
        ``pyflashmm.design(obs, "~ condition").X_frame()``.
    groups : array_like, cells
        Donor of every cell (the random intercept's grouping; one grouping only).
    gene_names : sequence of str, optional
        Default: the columns of a DataFrame ``counts``, else gene0, gene1, …
    allow_non_integer : bool
        Accept non-integer values (e.g. estimated counts); the NB density is used as is.
    size_factors : {"ratio", "poscounts", "normed_sum", "iterate"} or array
        Method of :func:`pyflashmm.size_factors`, or the factors themselves (offsets ln s).
    max_iter, tol : outer Newton iterations and the Newton-decrement threshold.
    warn : warn once when some genes did not converge.
    method : {"laplace", "agq"}
        ``"laplace"``: glmmTMB's Laplace approximation. ``"agq"``: adaptive Gauss–Hermite
        quadrature of each donor's integral with ``n_agq`` nodes, maximised from the Laplace
        fit (:mod:`pyflashmm._nbmm.agq`); genes with σ² = 0 keep the Laplace fit.
    n_agq : int, optional
        Quadrature nodes: None or 1 with ``"laplace"``; an integer ≥ 2 with ``"agq"``
        (default 11).
    reml : bool
        Restricted maximum likelihood, as glmmTMB's ``REML = TRUE``: β is integrated out with
        the donor intercepts (flat prior, one joint Laplace approximation over (β, b)) and the
        result maximised over (ln σ², ln α) only, starting from the ML fit
        (:mod:`pyflashmm._kernels.nbmm_reml`). Less biased σ² with few donors; ``loglik`` is
        then the REML log-likelihood (not comparable across fixed effects: no LRT). Laplace
        only (``method="agq"`` is refused).
    progress : show a progress bar over gene blocks (default: when there are more than two).

    Returns
    -------
    NbmmFit
        Test it with :func:`pyflashmm.nbmm_test`.

    Raises
    ------
    ValueError
        Naming the argument, before any fitting: a bad option, counts that are negative or not
        integers, a design of the wrong shape or rank, missing or single-level groups, bad size
        factors, more than one grouping.

    Warns
    -----
    ConvergenceWarning
        Once, when some genes did not converge (``max_iter``, ``separation``, …).
    """
    # the options first: no work on the counts before a bad argument is reported
    nq = check_options(max_iter, tol, method, n_agq, reml, progress)
    Y, Xa, code, levels, sf, coef_names, gene_names = _validate(
        counts, X, groups, size_factors, allow_non_integer, gene_names
    )
    Yg = (Y.T.tocsr() if sp.issparse(Y) else sp.csr_matrix(Y.T)).astype(np.float64)
    Yg.sort_indices()
    data = NbmmData(
        counts=Yg, groups=code, max_iter=int(max_iter), tol=float(tol), n_agq=nq,
        reml=bool(reml),
    )  # fmt: skip
    res = fit_arrays(data, Xa, sf, len(levels), progress)
    names = np.asarray(STATUS_NAMES, dtype=object)[res["status"]]
    converged = np.isin(res["status"], (_status.OK, _status.BOUNDARY))
    if warn and failed_fits(names):
        warn_nbmm_not_converged(failed_fits(names), len(gene_names), stacklevel=3)
    p = Xa.shape[1]
    cov = res["cov"]
    diag = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    return NbmmFit(
        coef=res["coef"],
        se=np.ascontiguousarray(diag[:, :p]),
        sigma2=res["sigma2"],
        dispersion=1.0 / res["theta"],
        log_sigma2_se=diag[:, p].copy(),
        log_dispersion_se=diag[:, p + 1].copy(),
        cov=cov,
        loglik=res["loglik"],
        converged=converged,
        status=names,
        n_iter=res["n_iter"],
        size_factors=sf,
        X=Xa,
        coef_names=coef_names,
        gene_names=gene_names,
        group_names=levels,
        modes=res["modes"],
        base_mean=np.asarray(Yg @ (1.0 / sf)).ravel() / sf.size,
        data=data,
        n_agq=nq,
        reml=bool(reml),
    )


def check_options(max_iter, tol, method, n_agq, reml, progress) -> int:
    """:func:`nbmm`'s options checked (ValueError naming the bad one); returns the number of
    quadrature nodes (1 = Laplace)."""
    if isinstance(max_iter, bool) or not (isinstance(max_iter, int | np.integer) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, int | float | np.floating) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    nq = check_method(method, n_agq)
    if not isinstance(reml, bool | np.bool_):
        raise ValueError(f"reml must be True or False, got {reml!r}")
    if reml and nq > 1:
        raise ValueError(
            "reml=True with method='agq' is not supported: REML is glmmTMB's Laplace "
            "approximation over (β, b); use method='laplace'"
        )
    if progress is not None and not isinstance(progress, bool | np.bool_):
        raise ValueError(f"progress must be True, False or None, got {progress!r}")
    return nq


def failed_fits(status: np.ndarray) -> int:
    """Genes whose fit failed (not converged, and not all-zero or in one donor)."""
    return int(np.sum(~np.isin(status, ("ok", "boundary", "all_zero", "one_group"))))


def warn_nbmm_not_converged(n_bad: int, n_genes: int, stacklevel: int) -> None:
    """The one warning of a fit in which ``n_bad`` of ``n_genes`` genes failed."""
    warnings.warn(
        f"nbmm: {n_bad} of {n_genes} genes did not converge (see the status field)",
        ConvergenceWarning,
        stacklevel=stacklevel,
    )


#: Newton with the analytic Hessian (False: differences of the gradient, the previous method;
#: kept for the benchmark and as the test oracle)
_ANALYTIC_HESSIAN = True

#: the per-gene outputs of the kernels, in their argument order
_FIELDS = ("coef", "cov", "sigma2", "theta", "loglik", "status", "n_iter", "modes")

#: a spread of the linear predictor xᵀβ over the design rows beyond this (a fold change of
#: e²⁰ ≈ 5·10⁸ between two rows) means a diverging coefficient, not an estimate
SEPARATION_SPREAD = 20.0

#: genes per block of the fit (the unit of the progress bar; each block runs parallel over genes)
_GENE_BLOCK = 512


def _mark_separation(coef, status, X) -> None:
    """Status ``separation`` for fitted genes whose linear predictor xᵀβ̂ spreads over more
    than :data:`SEPARATION_SPREAD` across the distinct design rows.

    When the counts separate design rows (e.g. every count of one arm is zero) the maximum lies
    at |β| → ∞: Newton stops on the flat likelihood with a huge β and SE, and a Wald test would
    report p ≈ 1. The spread is measured on xᵀβ, so it does not depend on the units of the
    covariates.
    """
    fitted = np.isin(status, (_status.OK, _status.BOUNDARY, _status.MAX_ITER))
    if not fitted.any():
        return
    rows = np.unique(X, axis=0)
    eta = rows @ coef[fitted].T  # distinct rows × fitted genes
    spread = eta.max(axis=0) - eta.min(axis=0)
    idx = np.flatnonzero(fitted)[spread > SEPARATION_SPREAD]
    status[idx] = _status.SEPARATION


@numba_parallel_only
def fit_arrays(data: NbmmData, Xa, sf, n_groups, progress=None) -> dict:
    """Fit every gene of ``data`` with design ``Xa`` (cells × p) and size factors ``sf``.

    Returns the per-gene arrays: ``coef`` (G × p), ``cov`` (G × (p+2) × (p+2), in
    (β, ln σ², ln α)), ``sigma2``, ``theta`` (1/α), ``loglik``, ``status`` (codes), ``n_iter``,
    ``modes`` (G × donors). Genes are fitted in blocks (each parallel over its genes); every
    gene's result depends on that gene only, so neither the blocks nor the threads change it.
    """
    Yg = data.counts
    G = Yg.shape[0]
    p = Xa.shape[1]
    cls, doff, Xc, lsc, ncl = cell_classes(Xa, data.groups, sf, n_groups)
    P = p + 2
    out = {
        "coef": np.empty((G, p)),
        "cov": np.empty((G, P, P)),
        "sigma2": np.empty(G),
        "theta": np.empty(G),
        "loglik": np.empty(G),
        "status": np.empty(G, np.int64),
        "n_iter": np.empty(G, np.int64),
        "modes": np.empty((G, n_groups)),
    }
    starts = list(range(0, G, _GENE_BLOCK))
    show = len(starts) > 2 if progress is None else bool(progress)
    gval_all = np.ascontiguousarray(Yg.data, dtype=np.float64)
    gcell_all = Yg.indices.astype(np.int64)
    for a in tqdm(starts, disable=not show, desc="nbmm", unit="block"):
        b = min(a + _GENE_BLOCK, G)
        lo, hi = int(Yg.indptr[a]), int(Yg.indptr[b])
        gptr = (Yg.indptr[a : b + 1] - lo).astype(np.int64)
        blk = {k: v[a:b] for k, v in out.items()}
        _k.fit_genes(
            gptr, gcell_all[lo:hi], gval_all[lo:hi], cls, Xc, lsc, ncl, doff,
            data.max_iter, data.tol, blk["coef"], blk["cov"], blk["sigma2"], blk["theta"],
            blk["loglik"], blk["status"], blk["n_iter"], blk["modes"], _ANALYTIC_HESSIAN,
        )  # fmt: skip
        if data.n_agq > 1:  # AGQ from the Laplace fit
            refit = agq_refit(
                gptr, gcell_all[lo:hi], gval_all[lo:hi], cls, Xc, lsc, ncl, doff, data.n_agq,
                data.max_iter, data.tol, *(blk[k] for k in _FIELDS),
            )  # fmt: skip
            for k, v in zip(_FIELDS, refit, strict=True):
                blk[k][...] = v
        if data.reml:  # REML from the ML fit (in place; cov in (β, ln σ², ln θ) as ML's)
            _kr.reml_fit_genes(
                gptr, gcell_all[lo:hi], gval_all[lo:hi], cls, Xc, lsc, ncl, doff,
                data.max_iter, data.tol, *(blk[k] for k in _FIELDS),
            )  # fmt: skip
    _mark_separation(out["coef"], out["status"], Xa)
    # (β, ln σ², ln θ) → (β, ln σ², ln α): flip the sign of the last row and column
    cov = out["cov"]
    cov[:, p + 1, :] *= -1.0
    cov[:, :, p + 1] *= -1.0
    return out
