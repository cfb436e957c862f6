"""The DESeq2-style negative-binomial GLM: ``nbglm`` fits it once, ``nbglm_test`` tests it.

Model (gene i, sample j): y_ij ~ NB(μ_ij, α_i), Var = μ + αμ², ln μ_ij = ln s_j + x_jᵀβ_i.
Counts are the response, the link is log and ln s_j are offsets. β is fitted on the natural-log
scale with a ridge λ = 1e-6 on the log2 scale (λ/ln²2 on the natural scale) and reported as
log2 fold changes β/ln 2.

Pipeline (DESeq2 1.38, ``DESeq()`` defaults), one function per stage:

1. :func:`_validate` — counts, design, names; the design's distinct rows (once per fit).
2. :func:`_estimate_size_factors` — s_j (:mod:`pyflashmm._size_factors`).
3. :func:`_gene_wise_stage` — initial and gene-wise dispersions α̂ per gene block
   (:mod:`pyflashmm._nbglm.dispersion`).
4. :func:`_trend_and_prior` — the trend α_tr(μ̄) and the prior variance σ²_d
   (:mod:`pyflashmm._nbglm.trend`).
5. :func:`_fit_blocks` — per block: MAP dispersions, the GLM (IRLS, L-BFGS-B fallback;
   :mod:`pyflashmm._nbglm.irls`) and Cook's distances D_ij = r²_ij/p · h_ij/(1−h_ij)²
   (:mod:`pyflashmm._nbglm.cooks`).
6. :func:`_replace_outliers` — counts with D > F_{0.99}(p, m−p) in samples whose design row
   occurs ≥ ``min_replicates_for_replace`` times are replaced by the 0.2-trimmed mean × s_j and
   the gene refitted (steps 3–5 with minmu 0.5, the trend and prior kept); elsewhere the
   p-values of such genes become NA.
7. The tests (:mod:`pyflashmm._nbglm.inference`): Wald z (or t with m − p df) or LRT χ², the
   Cook's and all-zero rules, independent filtering on the base mean and Benjamini–Hochberg.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy import stats

from pyflashmm import _status
from pyflashmm._checks import check_full_rank
from pyflashmm._contrasts import as_contrasts
from pyflashmm._jit import numba_parallel_only
from pyflashmm._kernels.nb_layout import SampleClasses
from pyflashmm._nbglm import inference as _inference
from pyflashmm._nbglm.cooks import REFIT_MINMU, CooksSummary, cooks_block
from pyflashmm._nbglm.count_block import CountBlock, GeneBlocks, genes_by_samples
from pyflashmm._nbglm.counts_input import as_counts
from pyflashmm._nbglm.dispersion import GeneWise, MapDispersion, gene_wise_block, map_dispersion
from pyflashmm._nbglm.irls import LN2, GlmBlockFit, fit_glm
from pyflashmm._nbglm.layout import DesignLayout, design_layout, sample_classes
from pyflashmm._nbglm.r_stats import trimmed_mean
from pyflashmm._nbglm.trend import (
    MIN_DISP,
    DispersionTrend,
    fit_trend,
    prior_variance,
    var_log_disp_ests,
)
from pyflashmm._size_factors import METHODS as SIZE_FACTOR_METHODS
from pyflashmm._size_factors import size_factors_checked


@dataclass(frozen=True)
class NbGlmData:
    """What later tests need beyond the public fields of :class:`NbGlmFit`.

    Attributes
    ----------
    counts : ndarray or scipy.sparse.csr_matrix, G × m
        The validated counts, genes × samples (a view of a dense input, a CSR copy of a sparse
        one).
    layout : DesignLayout
        The design's distinct rows (reused by every test).
    classes : SampleClasses
        Samples sharing a size factor and a design row.
    minmu : float
        Floor of the fitted means used by the fit (``REFIT_MINMU`` for refitted genes).
    fallback : ndarray of bool, G
        Genes refitted by L-BFGS-B (their log-likelihood uses floored means).
    refit_genes : ndarray of int
        Genes refitted after outlier replacement; ``refit_counts`` their counts then (k × m).
    block_size : int
        Genes per block.
    lrt_stats : mapping
        LRT statistics 2(ℓ_full − ℓ_reduced) already computed, by reduced design (the default
        test's), so that testing the same contrast again costs no refit.
    tests : mapping
        The default test's result, by ``inference.test_key``, so that ``nbglm_test`` of the
        same contrast and settings returns it instead of running it again (both mappings are
        read-only: a test never changes the fit).
    """

    counts: object
    layout: DesignLayout
    classes: SampleClasses
    minmu: float
    fallback: np.ndarray
    refit_genes: np.ndarray
    refit_counts: np.ndarray
    block_size: int
    lrt_stats: dict = field(default_factory=dict, repr=False)
    tests: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class NbGlmFit:
    """Result of :func:`nbglm`; arrays are gene-major (length G, or G×p, G×p×p).

    Test any contrast of it with :func:`pyflashmm.nbglm_test`; the fields of the default
    test (``log2_fold_change`` … ``filter_threshold``) are those of the contrast given to
    ``nbglm`` (the last coefficient by default), computed by the same code.

    Attributes
    ----------
    base_mean : mean of normalized counts y/s (after outlier replacement, as DESeq2; 0 for
        all-zero genes).
    coef, coef_se, cov : all coefficients on the natural-log scale, their standard errors
        (G×p) and covariance Σ = (XᵀWX+Λ)⁻¹ XᵀWX (XᵀWX+Λ)⁻¹ (G×p×p).
    disp_gene_est, disp_fit, dispersion : gene-wise, trend and final dispersions.
    disp_map, disp_outlier : MAP dispersion and the outlier flag (gene-wise kept).
    converged : IRLS convergence of β (or success of its L-BFGS-B fallback).
    status : per-gene status name (``pyflashmm.STATUS_NAMES``): "ok", "all_zero" (every
        count zero, also after outlier replacement) or "max_iter" (IRLS and fallback did not
        converge).
    max_cooks : maximum Cook's distance used for p-value filtering (NaN when not recorded).
    replaced : genes with a Cook's distance above the cutoff when outliers could be replaced
        (DESeq2's ``replace``): their outlying counts in samples with enough replicates were
        replaced and the gene refitted (unless it became all-zero).
    all_zero : genes with only zero counts (skipped, NaN results).
    zero_after_replacement : genes all-zero after outlier replacement (tests give 0 and p 1).
    cooks_outlier : genes whose p-values are NA for a Cook's distance above F_{0.99}(p, m−p)
        (for a two-group design not when ≥ 3 counts exceed the count at that distance).
    size_factors : per-sample factors used. X : the design (m×p). prior_var : σ²_d.
    trend : "parametric", "local" or "mean". trend_coefficients : (a₀, a₁) of the
        parametric trend when used.
    test, use_t, alpha, independent_filtering : the default test's settings (also the
        defaults of ``nbglm_test``).
    loglik : log-likelihood of the full model per gene when the default test is the LRT
        (else None; ``nbglm_test`` then computes it).
    log2_fold_change, lfc_se : the tested contrast, log2 scale.
    stat, p_value, adj_p_value : Wald z (or t) or LRT χ², p-value (NaN for Cook's outliers and
        all-zero genes), BH-adjusted p after independent filtering (NaN when filtered).
    contrast_name, df, filter_threshold : name of the contrast, df of the test's reference
        distribution (∞ for z, m − p for t, the χ² df for the LRT) and the base-mean
        threshold of independent filtering.
    """

    base_mean: np.ndarray
    coef: np.ndarray
    coef_se: np.ndarray
    cov: np.ndarray
    disp_gene_est: np.ndarray
    disp_fit: np.ndarray
    dispersion: np.ndarray
    disp_map: np.ndarray
    disp_outlier: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    max_cooks: np.ndarray
    replaced: np.ndarray
    all_zero: np.ndarray
    zero_after_replacement: np.ndarray
    cooks_outlier: np.ndarray
    size_factors: np.ndarray
    X: np.ndarray
    coef_names: tuple
    gene_names: tuple
    prior_var: float
    trend: str
    trend_coefficients: np.ndarray | None
    test: str
    use_t: bool
    alpha: float
    independent_filtering: bool
    log2_fold_change: np.ndarray
    lfc_se: np.ndarray
    stat: np.ndarray
    p_value: np.ndarray
    adj_p_value: np.ndarray
    contrast_name: str
    df: float = np.inf
    filter_threshold: float = np.nan
    loglik: np.ndarray | None = field(default=None, repr=False)
    data: NbGlmData | None = field(default=None, repr=False, compare=False)

    @property
    def natural_log_fold_change(self) -> np.ndarray:
        """The tested contrast on the natural-log scale (β, not β/ln 2)."""
        return self.log2_fold_change * LN2

    def to_frame(self) -> pd.DataFrame:
        """The default test as a tidy table (one row per gene): variable, contrast, log_fc
        (log2), se, stat, df, p_value, adj_p_value, method, base_mean, dispersion, converged,
        status (the columns of ``nbglm_test``)."""
        G = self.base_mean.size
        return pd.DataFrame(
            {
                "variable": list(self.gene_names),
                "contrast": [self.contrast_name] * G,
                "log_fc": self.log2_fold_change,
                "se": self.lfc_se,
                "stat": self.stat,
                "df": np.full(G, self.df),
                "p_value": self.p_value,
                "adj_p_value": self.adj_p_value,
                "method": ["nbglm"] * G,
                "base_mean": self.base_mean,
                "dispersion": self.dispersion,
                "converged": self.converged,
                "status": self.status,
            }
        )


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    """The keyword arguments of :func:`nbglm` after the preset's defaults are applied."""

    size_factors: object  # a method name or the factors
    fit_type: str
    test: str
    minmu: float
    cooks: bool
    independent_filtering: bool
    alpha: float
    use_t: bool
    min_replicates_for_replace: float
    prior_var: float | None
    exact_dispersion: bool
    block_size: int


#: defaults of the arguments a preset sets (None in the signature means "the preset's")
_PRESETS = {
    None: {"size_factors": "ratio", "test": "wald", "minmu": 0.5, "min_replicates_for_replace": 7},
    "single_cell": {
        "size_factors": "poscounts",
        "test": "lrt",
        "minmu": 1e-6,
        "min_replicates_for_replace": np.inf,
    },
}


def _options(
    preset,
    *,
    size_factors,
    fit_type,
    test,
    minmu,
    cooks,
    independent_filtering,
    alpha,
    use_t,
    min_replicates_for_replace,
    prior_var,
    exact_dispersion,
    block_size,
) -> _Options:
    """Arguments left at None take the preset's default; explicit ones are kept."""
    if preset not in _PRESETS:
        raise ValueError(f"preset must be None or 'single_cell', got {preset!r}")
    d = _PRESETS[preset]
    size_factors = d["size_factors"] if size_factors is None else size_factors
    test = str(d["test"] if test is None else test).lower()
    minmu = d["minmu"] if minmu is None else minmu
    if min_replicates_for_replace is None:
        min_replicates_for_replace = d["min_replicates_for_replace"]
    if test not in ("wald", "lrt"):
        raise ValueError(f"test must be 'wald' or 'lrt', got {test!r}")
    if fit_type not in ("parametric", "local", "mean"):
        raise ValueError(f"fit_type must be 'parametric', 'local' or 'mean', got {fit_type!r}")
    if isinstance(size_factors, str) and size_factors not in SIZE_FACTOR_METHODS:
        raise ValueError(
            f"size_factors must be one of {SIZE_FACTOR_METHODS} or an array, got {size_factors!r}"
        )
    if not (isinstance(block_size, int | np.integer) and block_size >= 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return _Options(
        size_factors,
        fit_type,
        test,
        float(minmu),
        bool(cooks),
        bool(independent_filtering),
        float(alpha),
        bool(use_t),
        float(min_replicates_for_replace),
        prior_var,
        bool(exact_dispersion),
        int(block_size),
    )


# ----------------------------------------------------------------------------- 1. validate


@dataclass(frozen=True)
class _Inputs:
    """Validated input: counts (samples × genes and genes × samples), the design layout,
    names, and the genes that are all-zero."""

    Y: object
    Yt: object
    layout: DesignLayout
    coef_names: tuple
    gene_names: tuple
    all_zero: np.ndarray


def _validate(counts, X, *, coef_names, gene_names, allow_non_integer, whole=True) -> _Inputs:
    """Check counts and design (types, shapes, values, rank, names) before any work;
    ``whole=False`` for a block of the genes (the genes' number is checked on the whole)."""
    if gene_names is None and isinstance(counts, pd.DataFrame):
        gene_names = [str(c) for c in counts.columns]
    if coef_names is None and isinstance(X, pd.DataFrame):
        coef_names = [str(c) for c in X.columns]
    Y = as_counts(counts, allow_non_integer=allow_non_integer)
    m, G = Y.shape
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != m:
        raise ValueError(f"X must have shape ({m}, p) to match counts, got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    p = X.shape[1]
    coef_names = tuple(coef_names) if coef_names is not None else tuple(f"x{k}" for k in range(p))
    gene_names = tuple(gene_names) if gene_names is not None else tuple(f"g{k}" for k in range(G))
    if len(coef_names) != p:
        raise ValueError(f"coef_names has length {len(coef_names)}, expected {p} (columns of X)")
    if len(gene_names) != G:
        raise ValueError(f"gene_names has length {len(gene_names)}, expected {G}")
    if p == 0:
        raise ValueError("X has no columns")
    check_full_rank(X.T @ X, coef_names, "X")
    if m <= p:
        raise ValueError(f"X has {p} columns for {m} samples: no residual degrees of freedom")
    all_zero = np.asarray(Y.sum(axis=0)).ravel() == 0
    n_genes = int(np.count_nonzero(~all_zero))
    if whole:
        check_gene_count(n_genes)
    return _Inputs(Y, genes_by_samples(Y), design_layout(X), coef_names, gene_names, all_zero)


def check_gene_count(n_genes: int) -> None:
    """The dispersion trend needs at least 2 genes that are not all-zero."""
    if n_genes == 0:
        raise ValueError("counts: every gene is all-zero")
    if n_genes < 2:
        raise ValueError(
            f"counts: {n_genes} gene is not all-zero; nbglm estimates a dispersion trend across "
            "genes and needs at least 2 (in practice hundreds of) genes that are not all-zero"
        )


# ----------------------------------------------------------------------------- 2. size factors


def _estimate_size_factors(inputs: _Inputs, size_factors) -> np.ndarray:
    """The size factors: estimated by a method of :func:`pyflashmm.size_factors`, or checked."""
    m = inputs.layout.m
    if isinstance(size_factors, str):
        return size_factors_checked(inputs.Y, size_factors)
    sf = np.asarray(size_factors, dtype=np.float64).ravel()
    if sf.size != m:
        raise ValueError(f"size_factors has length {sf.size}, expected {m} (rows of counts)")
    if not (np.isfinite(sf).all() and (sf > 0).all()):
        raise ValueError("size_factors must be finite and > 0")
    return sf


# ----------------------------------------------------------------------------- 3. gene-wise


@dataclass(frozen=True)
class _GeneWiseStage:
    """Gene-wise dispersions and base means of the non-zero genes (in block order), and the
    means each block's estimates were made at (released by the MAP stage)."""

    disp: np.ndarray
    base_mean: np.ndarray
    blocks: list


def _gene_wise_stage(blocks: GeneBlocks, sf, layout, classes, opts: _Options) -> _GeneWiseStage:
    """Initial and gene-wise dispersions of every block (steps 1–3 of ``dispersion``)."""
    per_block = [
        gene_wise_block(
            blk, sf, layout, classes, opts.minmu, exact=opts.exact_dispersion, min_disp=MIN_DISP
        )
        for _idx, blk in blocks
    ]
    disp = np.concatenate([gw.disp for gw in per_block] + [np.zeros(0)])
    base_mean = np.concatenate([gw.base_mean for gw in per_block] + [np.zeros(0)])
    return _GeneWiseStage(disp, base_mean, per_block)


# ----------------------------------------------------------------------------- 4. trend, prior


@dataclass(frozen=True)
class _Prior:
    """The dispersion trend, σ²_d of the log-dispersion prior and the variance of the log
    gene-wise estimates around the trend (for the dispersion-outlier rule)."""

    trend: DispersionTrend
    prior_var: float
    var_log_disp: float


def _trend_and_prior(gw: _GeneWiseStage, layout: DesignLayout, opts: _Options) -> _Prior:
    """Fit the trend across genes and the prior variance (``trend``)."""
    bm, est = gw.base_mean, gw.disp
    try:
        trend = fit_trend(bm, est, opts.fit_type, MIN_DISP)
    except (ArithmeticError, RuntimeError, np.linalg.LinAlgError) as exc:
        # a numerical failure the trend code does not anticipate
        raise ValueError(
            f"the dispersion trend ({opts.fit_type}) could not be fitted: {exc}"
        ) from exc
    dfit = np.asarray(trend(bm), dtype=float) * np.ones_like(bm)
    vlde = var_log_disp_ests(est, dfit, MIN_DISP)
    prior_var = opts.prior_var
    if prior_var is None:
        prior_var = prior_variance(est, dfit, layout.m, layout.p, MIN_DISP)
    return _Prior(trend, float(prior_var), float(vlde))


# ----------------------------------------------------------------------------- 5. blocks


@dataclass(frozen=True)
class _BlockContext:
    """What every block's MAP, GLM and Cook's stage shares."""

    layout: DesignLayout
    sf: np.ndarray
    classes: SampleClasses
    minmu: float
    exact: bool
    prior: _Prior
    replaceable: np.ndarray  # samples whose outlying counts may be replaced
    cooks_cutoff: float


@dataclass(frozen=True)
class _BlockFit:
    """MAP dispersions, GLM and Cook's summaries of a gene block."""

    base_mean: np.ndarray
    disp_gene_est: np.ndarray
    disp_fit: np.ndarray
    disp: MapDispersion
    glm: GlmBlockFit
    cooks: CooksSummary


def _fit_block(blk: CountBlock, ctx: _BlockContext, gene_wise: GeneWise | None = None):
    """Everything per gene after the trend (gene-wise dispersions first when not given)."""
    if gene_wise is None:
        gene_wise = gene_wise_block(
            blk, ctx.sf, ctx.layout, ctx.classes, ctx.minmu, exact=ctx.exact, min_disp=MIN_DISP
        )
    est, mu0, bm = gene_wise
    dfit = np.asarray(ctx.prior.trend(bm), dtype=float) * np.ones_like(bm)
    disp = map_dispersion(
        blk,
        mu0,
        ctx.sf,
        ctx.layout,
        ctx.classes,
        est,
        dfit,
        ctx.prior.prior_var,
        ctx.prior.var_log_disp,
        min_disp=MIN_DISP,
        exact=ctx.exact,
    )
    glm = fit_glm(blk, ctx.sf, ctx.layout, ctx.classes, disp.dispersion, minmu=ctx.minmu)
    ck = cooks_block(
        blk,
        ctx.sf,
        ctx.layout,
        ctx.classes,
        glm,
        disp.dispersion,
        bm,
        ctx.replaceable,
        ctx.cooks_cutoff,
    )
    return _BlockFit(bm, est, dfit, disp, glm, ck)


class _GeneArrays:
    """The per-gene results (G genes, p coefficients), filled block by block and overwritten
    for refitted genes (an accumulator of the fit stage, not a result)."""

    def __init__(self, G, p):
        nan = np.full(G, np.nan)
        self.base_mean = nan.copy()
        self.disp_gene_est = nan.copy()
        self.disp_fit = nan.copy()
        self.dispersion = nan.copy()
        self.disp_map = nan.copy()
        self.disp_outlier = np.zeros(G, bool)
        self.converged = np.zeros(G, bool)
        self.fallback = np.zeros(G, bool)
        self.coef = np.full((G, p), np.nan)
        self.cov = np.full((G, p, p), np.nan)

    def store(self, idx, b: _BlockFit) -> None:
        self.base_mean[idx] = b.base_mean
        self.disp_gene_est[idx] = b.disp_gene_est
        self.disp_fit[idx] = b.disp_fit
        self.dispersion[idx] = b.disp.dispersion
        self.disp_map[idx] = b.disp.disp_map
        self.disp_outlier[idx] = b.disp.outlier
        self.converged[idx] = b.glm.converged
        self.fallback[idx] = b.glm.fallback
        self.coef[idx] = b.glm.beta
        self.cov[idx] = b.glm.sigma


@dataclass(frozen=True)
class _CooksStage:
    """Cook's summaries of the first pass: max distance (filter), the same ignoring
    replaceable samples, DESeq2's two-group "≥ 3 counts above" check, and the genes whose
    outliers are replaced with their counts and distances."""

    max_cooks: np.ndarray
    max_nonrep: np.ndarray
    three_above: np.ndarray
    candidates: list  # (gene, counts m, distances m)


def _fit_blocks(
    blocks: GeneBlocks,
    gw: _GeneWiseStage,
    ctx: _BlockContext,
    arrays: _GeneArrays,
    collect_outliers: bool,
) -> _CooksStage:
    """MAP, GLM and Cook's of every block (into ``arrays``); returns the Cook's stage."""
    G = arrays.base_mean.size
    max_cooks = np.full(G, np.nan)
    max_nonrep = np.full(G, np.nan)
    three_above = np.zeros(G, bool)
    candidates = []
    for b, (idx, blk) in enumerate(blocks):
        out = _fit_block(blk, ctx, gw.blocks[b])
        gw.blocks[b] = None  # the block's means are no longer needed
        arrays.store(idx, out)
        ck = out.cooks
        max_cooks[idx] = ck.max
        three_above[idx] = ck.n_above_argmax >= 3
        if collect_outliers:
            max_nonrep[idx] = ck.max_nonrep
            for k, r in enumerate(np.flatnonzero(ck.any_above)):
                candidates.append((idx[r], blk.rows(r)[0], ck.rows[k]))
    return _CooksStage(max_cooks, max_nonrep, three_above, candidates)


# ----------------------------------------------------------------------------- 6. outliers


@dataclass(frozen=True)
class _Replacement:
    """Outlier replacement: the flagged genes (DESeq2's ``replace``), those all-zero after
    replacement, the refitted genes with their new counts, and the max Cook's distances
    reported afterwards."""

    replaced: np.ndarray
    zero_after: np.ndarray
    refit_genes: np.ndarray
    refit_counts: np.ndarray
    max_cooks: np.ndarray


def _replace_outliers(ck: _CooksStage, ctx: _BlockContext, arrays: _GeneArrays) -> _Replacement:
    """Replace outlying counts by the 0.2-trimmed mean of y/s times s_j in replaceable samples
    and refit the genes whose counts changed (with ``REFIT_MINMU``)."""
    G = arrays.base_mean.size
    m = ctx.layout.m
    replaced = np.zeros(G, bool)
    zero_after = np.zeros(G, bool)
    refit_genes = np.zeros(0, np.int64)
    refit_counts = np.zeros((0, m))
    sf = ctx.sf
    if ck.candidates:
        gidx = np.array([g for g, _, _ in ck.candidates])
        Ysub = np.array([y for _, y, _ in ck.candidates])
        Csub = np.array([c for _, _, c in ck.candidates])
        tbm = trimmed_mean(Ysub / sf, 0.2, axis=1)
        repl = np.trunc(np.outer(tbm, sf))
        mask = (Csub > ctx.cooks_cutoff) & ctx.replaceable[None, :]
        Ynew = np.where(mask, repl, Ysub)
        zero_now = Ynew.sum(axis=1) == 0
        arrays.base_mean[gidx] = (Ynew / sf).mean(axis=1)
        zero_after[gidx[zero_now]] = True
        # DESeq2's replaceOutliers flags every gene with a distance above the cutoff (in
        # any sample) and refitWithoutOutliers refits those not all-zero now, re-estimating
        # with its default minmu (0.5). A gene whose counts did not change would refit to
        # the values it has unless minmu differs from 0.5, so it is skipped otherwise.
        replaced[gidx] = True
        changed = (Ynew != Ysub).any(axis=1)
        todo = ~zero_now & (changed | (ctx.minmu != REFIT_MINMU))
        if todo.any():
            refit_genes = gidx[todo]
            refit_counts = Ynew[todo]
            out = _fit_block(CountBlock.from_dense(refit_counts), replace(ctx, minmu=REFIT_MINMU))
            arrays.store(refit_genes, out)
    max_cooks = np.full(G, np.nan) if ctx.replaceable.all() else ck.max_nonrep
    return _Replacement(replaced, zero_after, refit_genes, refit_counts, max_cooks)


# ----------------------------------------------------------------------------- the pipeline


def warn_glm_not_converged(n_genes: int, stacklevel: int) -> None:
    """The warning of a fit in which the GLM of ``n_genes`` genes did not converge."""
    warnings.warn(
        f"{n_genes} genes did not converge in the GLM fit", RuntimeWarning, stacklevel=stacklevel
    )


def _fit(inputs: _Inputs, sf, opts: _Options, prior: _Prior | None = None,
         warn: bool = True) -> NbGlmFit:  # fmt: skip
    """Stages 3–6 (module docstring): the fit without its default test; with ``prior`` (the
    trend and prior of all genes, for a block of them) stage 4 is skipped."""
    layout = inputs.layout
    m, p = layout.m, layout.p
    G = inputs.all_zero.size
    classes = sample_classes(sf, layout)
    blocks = GeneBlocks(inputs.Yt, np.flatnonzero(~inputs.all_zero), opts.block_size)
    gw = _gene_wise_stage(blocks, sf, layout, classes, opts)
    if prior is None:
        prior = _trend_and_prior(gw, layout, opts)
    cutoff = float(stats.f.ppf(0.99, p, m - p))
    can_replace = opts.cooks and np.isfinite(opts.min_replicates_for_replace)
    replaceable = np.zeros(m, bool)
    if can_replace:
        replaceable = layout.replicated(opts.min_replicates_for_replace)
    ctx = _BlockContext(
        layout, sf, classes, opts.minmu, opts.exact_dispersion, prior, replaceable, cutoff
    )
    arrays = _GeneArrays(G, p)
    replacing = opts.cooks and bool(replaceable.any())
    ck = _fit_blocks(blocks, gw, ctx, arrays, collect_outliers=replacing)
    max_cooks = ck.max_cooks
    rep = None
    if replacing:
        rep = _replace_outliers(ck, ctx, arrays)
        max_cooks = rep.max_cooks
    replaced = rep.replaced if rep else np.zeros(G, bool)
    zero_after = rep.zero_after if rep else np.zeros(G, bool)
    cooks_outlier = np.zeros(G, bool)
    if opts.cooks:
        with np.errstate(invalid="ignore"):
            cooks_outlier = max_cooks > cutoff
        if layout.n_rows == 2 and p == 2:  # DESeq2's two-group rule
            cooks_outlier &= ~ck.three_above
    bmean = arrays.base_mean.copy()
    bmean[inputs.all_zero] = 0.0
    status = np.full(G, _status.OK)
    status[~arrays.converged] = _status.MAX_ITER
    status[inputs.all_zero | zero_after] = _status.ALL_ZERO
    nconv = int(np.sum(~arrays.converged[~inputs.all_zero]))
    if nconv and warn:
        warn_glm_not_converged(nconv, stacklevel=5)
    data = NbGlmData(
        counts=inputs.Yt,
        layout=layout,
        classes=classes,
        minmu=opts.minmu,
        fallback=arrays.fallback,
        refit_genes=rep.refit_genes if rep else np.zeros(0, np.int64),
        refit_counts=rep.refit_counts if rep else np.zeros((0, m)),
        block_size=opts.block_size,
    )
    nan = np.full(G, np.nan)
    return NbGlmFit(
        base_mean=bmean,
        coef=arrays.coef,
        coef_se=np.sqrt(np.maximum(np.diagonal(arrays.cov, axis1=1, axis2=2), 0.0)),
        cov=arrays.cov,
        disp_gene_est=arrays.disp_gene_est,
        disp_fit=arrays.disp_fit,
        dispersion=arrays.dispersion,
        disp_map=arrays.disp_map,
        disp_outlier=arrays.disp_outlier,
        converged=arrays.converged,
        status=np.asarray(_status.STATUS_NAMES, dtype=object)[status],
        max_cooks=max_cooks,
        replaced=replaced,
        all_zero=inputs.all_zero,
        zero_after_replacement=zero_after,
        cooks_outlier=cooks_outlier,
        size_factors=sf,
        X=layout.X,
        coef_names=inputs.coef_names,
        gene_names=inputs.gene_names,
        prior_var=prior.prior_var,
        trend=prior.trend.kind,
        trend_coefficients=prior.trend.coefficients,
        test=opts.test,
        use_t=opts.use_t,
        alpha=opts.alpha,
        independent_filtering=opts.independent_filtering,
        log2_fold_change=nan,
        lfc_se=nan,
        stat=nan,
        p_value=nan,
        adj_p_value=nan,
        contrast_name="",
        data=data,
    )


def _default_contrast(contrast, coef_names) -> tuple[str, np.ndarray]:
    """The one contrast of ``nbglm``'s default test: None → the last coefficient, an int → that
    coefficient, a numeric vector (named "contrast"), else anything ``nbglm_test`` takes that
    names one contrast. Returns (name, p × r matrix)."""
    p = len(coef_names)
    if contrast is None:
        contrast = coef_names[-1]
    elif isinstance(contrast, int | np.integer) and not isinstance(contrast, bool):
        if not -p <= contrast < p:
            raise ValueError(f"contrast index {contrast} out of range for {p} coefficients")
        contrast = coef_names[contrast]
    elif (
        isinstance(contrast, list | tuple | np.ndarray) and np.asarray(contrast).dtype.kind in "iuf"
    ):
        vec = np.asarray(contrast, dtype=np.float64)
        if vec.ndim != 1 or vec.size != p:
            raise ValueError(f"contrast has shape {vec.shape}, expected ({p},) (columns of X)")
        contrast = {"contrast": vec}
    contrasts = as_contrasts(list(coef_names), contrast)
    if len(contrasts) != 1:
        raise ValueError(
            f"nbglm reports one contrast, got {len(contrasts)} ({list(contrasts)}); fit once and "
            "test several with nbglm_test(fit, contrast)"
        )
    return next(iter(contrasts.items()))


@numba_parallel_only
def nbglm(
    counts,
    X,
    *,
    size_factors=None,
    fit_type="parametric",
    test=None,
    reduced=None,
    contrast=None,
    minmu=None,
    cooks=True,
    independent_filtering=True,
    alpha=0.1,
    use_t=False,
    min_replicates_for_replace=None,
    prior_var=None,
    exact_dispersion=False,
    preset=None,
    allow_non_integer=False,
    coef_names=None,
    gene_names=None,
    block_size=512,
) -> NbGlmFit:
    """Differential expression with DESeq2's negative-binomial GLM, reproduced step by step.

    Fits the model once (size factors, dispersions, coefficients, Cook's distances) and runs
    one test; :func:`pyflashmm.nbglm_test` tests further contrasts of the returned fit
    without refitting.

    Parameters
    ----------
    counts : array_like or scipy.sparse, shape (m, G)
        Counts, samples (or cells) in rows, genes in columns, held in memory; a pandas
        DataFrame gives gene names. Genes are fitted in blocks of ``block_size``; sparse
        input stays sparse (kernels expand one gene at a time) except in the steps that
        densify a block: the linear-model start of a non-group design, Cook's robust variance
        when every design cell has fewer than 1,000 samples, and ``exact_dispersion``.
    X : array_like, shape (m, p)
        Full-rank design matrix (a DataFrame gives coefficient names).
    size_factors : str or array_like, optional
        A :func:`~pyflashmm.size_factors` method or the factors themselves (m, all > 0);
        default ``"ratio"`` (``"poscounts"`` with ``preset="single_cell"``).
    fit_type : {"parametric", "local", "mean"}
        Dispersion trend; ``parametric`` falls back to ``local`` as DESeq2 does.
    test : {"wald", "lrt"}, optional
        Wald test of ``contrast``, or likelihood-ratio test of X against ``reduced``; default
        ``"wald"`` (``"lrt"`` with ``preset="single_cell"``).
    reduced : array_like, shape (m, p₀), optional
        Reduced design for the LRT (p₀ < p; p₀ = 0 means μ = s); default: X without the
        contrast's coefficient (X·N, N a basis of the null space of the contrast, for a
        general contrast).
    contrast : None, str, int, array_like, dict or DataFrame
        The contrast of the default test: a coefficient name or index, an expression
        (``"trtB - trtA"``), a numeric vector of length p, or one entry in any form
        :func:`pyflashmm.nbglm_test` takes; default the last coefficient.
    minmu : float, optional
        Floor on fitted means (0.5; 1e-6 with ``preset="single_cell"``), in the dispersion
        and GLM stages as in DESeq2's ``DESeq()``; genes refitted after outlier replacement
        use 0.5, as DESeq2's ``refitWithoutOutliers`` does.
    cooks : bool
        Cook's-distance outlier handling (replacement with ≥ ``min_replicates_for_replace``
        replicates, NA p-values otherwise).
    independent_filtering, alpha : bool, float
        DESeq2's independent filtering on the base mean at FDR ``alpha``, then BH.
    use_t : bool
        Wald p-values from t with m − p df instead of the normal.
    min_replicates_for_replace : float, optional
        Replicates of a design row needed to replace its outliers (7; ∞, never, with
        ``preset="single_cell"``).
    prior_var : float, optional
        Fix σ²_d of the log-dispersion prior (DESeq2's ``dispPriorVar``).
    exact_dispersion : bool
        Polish gene-wise and MAP dispersions to the exact optimum (DESeq2's line search stops
        early on some genes; off by default to match DESeq2).
    preset : None or "single_cell"
        DESeq2's single-cell recommendations as defaults of the arguments left unset:
        poscounts size factors, ``minmu=1e-6``, LRT, no outlier replacement.
    allow_non_integer : bool
        Accept non-integer (estimated) counts.
    coef_names, gene_names : sequence of str, optional
        Names of the columns of X and of the genes (else from DataFrames, else x0…, g0…).
    block_size : int
        Genes per block.

    Returns
    -------
    NbGlmFit
    """
    opts = _options(
        preset,
        size_factors=size_factors,
        fit_type=fit_type,
        test=test,
        minmu=minmu,
        cooks=cooks,
        independent_filtering=independent_filtering,
        alpha=alpha,
        use_t=use_t,
        min_replicates_for_replace=min_replicates_for_replace,
        prior_var=prior_var,
        exact_dispersion=exact_dispersion,
        block_size=block_size,
    )
    inputs = _validate(
        counts, X, coef_names=coef_names, gene_names=gene_names, allow_non_integer=allow_non_integer
    )
    return fit_and_test(inputs, opts, contrast, reduced)


def fit_and_test(inputs: _Inputs, opts: _Options, contrast, reduced,
                 prior: _Prior | None = None, warn: bool = True) -> NbGlmFit:  # fmt: skip
    """:func:`nbglm` after its checks: size factors, the fit (with the trend and prior of all
    genes when ``prior`` is given, for a block of them) and the default test."""
    name, L = _default_contrast(contrast, inputs.coef_names)
    if opts.test == "lrt" and reduced is not None:
        reduced = _inference.check_reduced(reduced, inputs.layout)
    sf = _estimate_size_factors(inputs, opts.size_factors)
    fit = _fit(inputs, sf, opts, prior, warn)
    if opts.test == "lrt":
        fit = replace(fit, loglik=_inference.full_loglik(fit))
    lrt_stats: dict = {}
    done: dict = {}
    res = _inference.test_contrasts(
        fit,
        {name: L},
        reduced,
        test=opts.test,
        use_t=opts.use_t,
        alpha=opts.alpha,
        independent_filtering=opts.independent_filtering,
        lrt_stats=lrt_stats,
        done=done,
    )[name]
    return replace(
        fit,
        data=replace(fit.data, lrt_stats=MappingProxyType(lrt_stats), tests=MappingProxyType(done)),
        log2_fold_change=res.log_fc,
        lfc_se=res.se,
        stat=res.stat,
        p_value=res.p_value,
        adj_p_value=res.adj_p_value,
        contrast_name=name,
        df=res.df,
        filter_threshold=res.filter_threshold,
    )
