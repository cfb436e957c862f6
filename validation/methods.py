r"""The DE methods of the validation suite, run on one data set for the treatment effect.

Every method tests H₀: β_trt = 0 for the treated arm ``treatment`` against the reference arm;
subjects (``sam``) are nested in arms, so the contrast is between subjects.

``lmm_satterthwaite`` (a), ``lmm_residual_df`` (b), ``lmm_ml`` (f)
    y_cg = log₂(1 + count_cg),  y_g = Xβ_g + Zb_g + ε,  b_g ~ N(0, θ_g I_S), ε ~ N(0, σ²_g I_n),
    X = [1, log L_c, 1{trt = treatment}] (+ cluster indicators when ``obs`` has several
    clusters), Z the subject indicators. Summary statistics are computed once; (a) and (b) are
    one REML fit tested with Satterthwaite df and with FLASHMM's n − p df; (f) is the ML fit,
    Satterthwaite df. ``log_fc`` is β_trt on the log₂(1 + count) scale.
``lm`` (c)
    The same X without Z, by ordinary least squares from the same statistics:
    β̂ = (XᵀX)⁻¹XᵀY, σ̂² = (Σy² − β̂ᵀXᵀy)/(n − p), t = β̂_j/√(σ̂²[(XᵀX)⁻¹]_jj) on n − p df,
    vectorised over genes.
``nbglm_cells`` (d)
    :func:`pyflashmm.nbglm` on the cells with ``preset="single_cell"`` (poscounts size factors
    per cell, which ignore the subjects; minμ = 10⁻⁶; likelihood-ratio test of ``~ trt``
    (+ ``cls``) against the design without ``trt``; no outlier replacement). ``log_fc`` is log₂.
``nbglm_pseudobulk`` (e)
    Counts summed per subject (:func:`pyflashmm.pseudobulk` by ``sam``; with several clusters
    the pooled treatment effect is tested, and the per-subject sum avoids treating the
    (subject, cluster) pseudobulks of one subject as independent samples), then DESeq2's
    defaults: ratio size factors, parametric trend, Wald test of ``~ trt``, Cook's
    distances, ``log_fc`` in log₂.
``nbmm`` (Wald t, between df), ``nbmm_z`` (Wald z), ``nbmm_lrt`` (likelihood ratio)
    :func:`pyflashmm.nbmm`, the NB mixed model y_cg ~ NB(μ_cg, α_g),
    ln μ_cg = x_cᵀβ_g + ln s_c + b_gs, b_gs ~ N(0, σ²_g), fitted once per data set with
    X = [1, 1{trt = treatment}] (+ cluster indicators) and poscounts size factors per cell; the
    three are :func:`pyflashmm.nbmm_test` of that one fit: the Wald t on the between–within df
    (S − 2 for the treatment; the package's default), the Wald z (glmmTMB's ``summary``) and
    the LRT against the refitted model without ``trt`` (χ²₁). Log library size is not a
    column of X, unlike the LMMs': in the NB model the size factors enter as the offset ln s_c,
    which is the role log L_c plays on the log₂(1 + count) scale, and a covariate as well would
    double-count depth. ``log_fc`` is log₂.
``nbmm_reml`` (Wald t, between df), ``nbmm_reml_z`` (Wald z)
    The same model fitted by REML (``nbmm(reml=True)``, glmmTMB's ``REML = TRUE``: β integrated
    out with the donor effects), whose σ² is not biased down as ML's is with few donors.

Not in :data:`METHODS` (the six of the calibration and power experiments, whose configs name
them) but in :data:`ALL_METHODS`: the LMM variants of :data:`LMM_VARIANTS` and the NB
mixed-model tests (``configs/nbmm_null.toml``).

Failures are data: a gene that a method cannot fit gets a NaN p-value and a ``status``; LMM
genes that did not converge (``LmmFit.converged`` false) also get NaN p-values. The per-gene
warnings of the fits are expected here and are silenced (the statuses record them). A method
that fails as a whole (e.g. a design without residual df) gives NaN for every gene with the
status ``failed: <reason>``; the run goes on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

import pyflashmm as fm

__all__ = ["METHODS", "run_methods"]

#: method ids, in the order of validation/README.md
METHODS = (
    "lmm_satterthwaite",
    "lmm_residual_df",
    "lm",
    "nbglm_cells",
    "nbglm_pseudobulk",
    "lmm_ml",
)
#: LMM methods: id → (fit method, ``nonneg``, ``df``, moderation: None, the constant prior,
#: limma's robust prior, or the prior that trends with the mean response). The first three are the
#: methods (a), (b), (f) of the six, with FLASHMM's semantics; the others are the variants
#: compared when the default handling of boundary fits and small samples was chosen
#: (configs ``lmm_inference.toml``): ``nonneg="refit"`` (genes without an unconstrained maximum
#: fitted again with σₖ² ≥ 0), ``nonneg=True`` throughout, between–within df, Kenward–Roger,
#: empirical-Bayes moderation (constant, robust, trended prior).
LMM_VARIANTS = {
    "lmm_satterthwaite": ("REML", False, "satterthwaite", None),
    "lmm_residual_df": ("REML", False, "residual", None),
    "lmm_ml": ("ML", False, "satterthwaite", None),
    "lmm_ml_refit": ("ML", "refit", "satterthwaite", None),
    "lmm_ml_expected": ("ML", "refit", "satterthwaite-expected", None),
    "lmm_refit_expected": ("REML", "refit", "satterthwaite-expected", None),
    "lmm_refit": ("REML", "refit", "satterthwaite", None),
    "lmm_nonneg": ("REML", True, "satterthwaite", None),
    "lmm_between": ("REML", "refit", "between", None),
    "lmm_kr": ("REML", "refit", "kenward-roger", None),
    "lmm_refit_moderated": ("REML", "refit", "satterthwaite", "constant"),
    "lmm_nonneg_moderated": ("REML", True, "satterthwaite", "constant"),
    "lmm_kr_moderated": ("REML", "refit", "kenward-roger", "constant"),
    "lmm_kr_robust": ("REML", "refit", "kenward-roger", "robust"),
    "lmm_refit_trend": ("REML", "refit", "satterthwaite", "trend"),
    "lmm_kr_trend": ("REML", "refit", "kenward-roger", "trend"),
}
#: lmmtest's moderation arguments for the last field of LMM_VARIANTS
_MODERATION = {
    None: {},
    "constant": {"moderate": True, "trend": False},
    "robust": {"moderate": True, "robust": True},
    "trend": {"moderate": True, "trend": True},
}
#: NB mixed-model tests: id → (``reml`` of :func:`pyflashmm.nbmm`, ``test``, ``df`` of
#: :func:`pyflashmm.nbmm_test`); one fit per ``reml`` value serves its tests
NBMM_VARIANTS = {
    "nbmm": (False, "wald", "between"),
    "nbmm_z": (False, "wald", "z"),
    "nbmm_lrt": (False, "lrt", "between"),
    "nbmm_reml": (True, "wald", "between"),
    "nbmm_reml_z": (True, "wald", "z"),
}
#: every method id run_methods knows
ALL_METHODS = (*METHODS, *(m for m in LMM_VARIANTS if m not in METHODS), *NBMM_VARIANTS)
COLUMNS = ["gene", "method", "log_fc", "stat", "p_value", "status"]


def _clean_obs(obs: pd.DataFrame, treatment: str) -> tuple[pd.DataFrame, str]:
    """Categorical ``sam``/``cls``/``trt`` restricted to the levels present, treatment last."""
    missing = [c for c in ("sam", "cls", "trt", "libsize") if c not in obs.columns]
    if missing:
        raise ValueError(f"obs lacks column(s) {missing}")
    trt = obs["trt"].astype(str).to_numpy()
    levels = sorted(set(trt))
    if str(treatment) not in levels or len(levels) != 2:
        raise ValueError(
            f"treatment: obs['trt'] must have two levels including {treatment!r}, got {levels}"
        )
    ref = next(lev for lev in levels if lev != str(treatment))
    out = pd.DataFrame(
        {
            "sam": pd.Categorical(obs["sam"].astype(str)),
            "cls": pd.Categorical(obs["cls"].astype(str)),
            "trt": pd.Categorical(trt, categories=[ref, str(treatment)]),
            "libsize": np.asarray(obs["libsize"], dtype=np.float64),
        }
    )
    return out, f"trt{treatment}"


def _frame(genes, method, log_fc, stat, p_value, status) -> pd.DataFrame:
    G = len(genes)
    return pd.DataFrame(
        {
            "gene": list(genes),
            "method": [method] * G,
            "log_fc": np.asarray(log_fc, dtype=np.float64),
            "stat": np.asarray(stat, dtype=np.float64),
            "p_value": np.asarray(p_value, dtype=np.float64),
            "status": np.broadcast_to(np.asarray(status, dtype=object), (G,)),
        }
    )


def _failed(genes, method, exc: Exception) -> pd.DataFrame:
    nan = np.full(len(genes), np.nan)
    return _frame(genes, method, nan, nan, nan, f"failed: {type(exc).__name__}: {exc}")


def _lmm_frames(stats_, coef, want) -> list[pd.DataFrame]:
    """The LMM methods of ``want`` (:data:`LMM_VARIANTS`), one fit per (method, nonneg)."""
    genes = stats_.gene_names
    out = []
    fits = {}
    for method, (fit_method, nonneg, df, moderate) in LMM_VARIANTS.items():
        if method not in want:
            continue
        key = (fit_method, nonneg)
        if key not in fits:
            fits[key] = fm.lmm(stats_, method=fit_method, nonneg=nonneg, warn=False)
        fit = fits[key]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = fm.lmmtest(fit, {"trt": coef}, df=df, **_MODERATION[moderate])
        except (ValueError, np.linalg.LinAlgError) as exc:
            out.append(_failed(genes, method, exc))
            continue
        p = np.where(fit.converged, res["p_value"].to_numpy(), np.nan)
        status = np.where(fit.refitted, "refit_" + fit.status.astype(str), fit.status)
        out.append(_frame(genes, method, res["log_fc"], res["stat"], p, status))
    return out


def ols_from_stats(stats_, coef: str) -> pd.DataFrame:
    """Ordinary least squares t test of ``coef`` for every gene from summary statistics.

    β̂ = (XᵀX)⁻¹XᵀY, RSS = Σy² − β̂ᵀXᵀy, σ̂² = RSS/(n − p), t = β̂_j / √(σ̂² [(XᵀX)⁻¹]_jj),
    p = 2 P(T_{n−p} > |t|). Genes with RSS ≤ 10⁻¹⁰ Σy² (y in the column span of X) get NaN
    and the status ``zero_variance``.

    Returns
    -------
    pandas.DataFrame
        ``gene``, ``method`` (``lm``), ``log_fc`` (β̂_j), ``stat`` (t), ``p_value``, ``status``.
    """
    names = list(stats_.fixed_names)
    if coef not in names:
        raise ValueError(f"coef {coef!r} is not one of the fixed effects {names}")
    j = names.index(coef)
    XX = np.asarray(stats_.XX, dtype=np.float64)
    XY = np.asarray(stats_.XY, dtype=np.float64)
    n, p = float(stats_.n), XX.shape[0]
    if n <= p:
        raise ValueError(f"stats: n = {n:g} cells for p = {p} fixed effects")
    XXinv = np.linalg.inv(XX)
    beta = XXinv @ XY  # p × G
    ynorm = np.asarray(stats_.Ynorm, dtype=np.float64)
    rss = ynorm - np.einsum("pg,pg->g", beta, XY)
    degenerate = rss <= 1e-10 * np.maximum(ynorm, np.finfo(float).tiny)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(np.where(degenerate, np.nan, rss) / (n - p) * XXinv[j, j])
        t = beta[j] / se
    pval = 2.0 * stats.t.sf(np.abs(t), n - p)
    status = np.where(degenerate, "zero_variance", "ok")
    return _frame(stats_.gene_names, "lm", np.where(degenerate, np.nan, beta[j]), t, pval, status)


def _nb_frame(fit, genes, method) -> pd.DataFrame:
    status = np.where(fit.converged, "ok", "not_converged").astype(object)
    status[np.isnan(fit.p_value) & fit.converged] = "no_p_value"  # Cook's outlier
    status[fit.all_zero] = "all_zero"
    return _frame(genes, method, fit.log2_fold_change, fit.stat, fit.p_value, status)


def _nbglm_cells(counts, obs, genes, coef, fixed) -> pd.DataFrame:
    X = fm.design(obs, fixed).X_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # per-gene non-convergence: see status
        fit = fm.nbglm(counts, X, preset="single_cell", contrast=coef, gene_names=genes)
    return _nb_frame(fit, genes, "nbglm_cells")


def _nbglm_pseudobulk(counts, obs, genes, coef) -> pd.DataFrame:
    summed, groups = fm.pseudobulk(counts, obs, by=["sam"])
    arm = obs.groupby("sam", observed=True)["trt"].first()
    groups = groups.assign(
        trt=pd.Categorical(arm.reindex(groups["sam"]).to_numpy(), obs["trt"].cat.categories)
    )
    X = fm.design(groups, "~ trt").X_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = fm.nbglm(summed, X, contrast=coef, gene_names=genes)
    return _nb_frame(fit, genes, "nbglm_pseudobulk")


def _nbmm_frames(counts, obs, genes, coef, fixed, want) -> list[pd.DataFrame]:
    """The NB mixed-model tests of ``want`` (:data:`NBMM_VARIANTS`), one :func:`nbmm` fit per
    estimation method (ML, REML)."""
    chosen = [m for m in NBMM_VARIANTS if m in want]
    fits = {}
    out = []
    for method in chosen:
        reml, test, df = NBMM_VARIANTS[method]
        try:
            if reml not in fits:
                X = fm.design(obs, fixed).X_frame()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # per-gene overflow: status
                    fits[reml] = fm.nbmm(counts, X, obs["sam"].to_numpy(),
                                         size_factors="poscounts", reml=reml, gene_names=genes,
                                         warn=False, progress=False)  # fmt: skip
            fit = fits[reml]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = fm.nbmm_test(fit, coef, test=test, df=df, progress=False)
        except (ValueError, np.linalg.LinAlgError) as exc:
            out.append(_failed(genes, method, exc))
            continue
        p = res["p_value"].to_numpy()
        status = np.asarray(fit.status, dtype=object).copy()
        # a converged full fit without a p-value: the LRT's reduced fit failed (or the SE is 0)
        status[np.isnan(p) & fit.converged] = "no_p_value"
        out.append(_frame(genes, method, res["log_fc"], res["stat"], p, status))
    return out


def run_methods(
    counts,
    obs: pd.DataFrame,
    *,
    treatment: str,
    methods: Sequence[str] = METHODS,
    gene_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Test the treatment effect on every gene with each of ``methods``.

    Parameters
    ----------
    counts : scipy.sparse matrix or ndarray, cells × genes
        Integer counts (e.g. ``SimulatedData.counts``).
    obs : pandas.DataFrame
        One row per cell with ``sam``, ``cls``, ``trt`` and ``libsize``; ``trt`` has two
        levels and every subject lies in one arm.
    treatment : str
        The treated arm (``SimulatedData.treatment``); the other level is the reference.
    methods : sequence of str
        A subset of :data:`ALL_METHODS` (the cell-level NB GLM is by far the slowest).
    gene_names : sequence of str, optional
        Default ``gene0``, ``gene1``, …

    Returns
    -------
    pandas.DataFrame
        One row per (method, gene), methods in the order of :data:`ALL_METHODS`: ``gene``,
        ``method``, ``log_fc``, ``stat``, ``p_value`` (NaN where the method failed on the
        gene), ``status`` (``ok`` or why not).
    """
    want = set(methods)
    unknown = sorted(want - set(ALL_METHODS))
    if unknown or not want:
        raise ValueError(f"methods: unknown or empty {unknown}; choose from {ALL_METHODS}")
    if counts.shape[0] != len(obs):
        raise ValueError(f"obs has {len(obs)} rows but counts has {counts.shape[0]} cells")
    G = counts.shape[1]
    genes = [f"gene{j}" for j in range(G)] if gene_names is None else [str(g) for g in gene_names]
    if len(genes) != G:
        raise ValueError(f"gene_names has length {len(genes)}, expected {G}")
    counts = sp.csr_matrix(counts) if not sp.issparse(counts) else counts.tocsr()
    obs, coef = _clean_obs(obs, treatment)
    if obs.groupby("sam", observed=True)["trt"].nunique().max() > 1:
        raise ValueError("obs: some subject is seen in both arms; subjects must be nested")
    cls_term = " + cls" if obs["cls"].cat.categories.size > 1 else ""
    frames = {}
    linear = want & {*LMM_VARIANTS, "lm"}
    if linear:
        dsg = fm.design(obs, f"~ log(libsize){cls_term} + trt", random="sam")
        st = fm.summary_stats(
            counts, dsg.X_frame(), dsg.Z, dsg.d, transform="log2p1", gene_names=genes
        )
        for fr in _lmm_frames(st, coef, want):
            frames[fr["method"].iat[0]] = fr
        if "lm" in want:
            frames["lm"] = ols_from_stats(st, coef)
    if "nbglm_cells" in want:
        try:
            frames["nbglm_cells"] = _nbglm_cells(counts, obs, genes, coef, f"~ trt{cls_term}")
        except (ValueError, np.linalg.LinAlgError) as exc:
            frames["nbglm_cells"] = _failed(genes, "nbglm_cells", exc)
    if "nbglm_pseudobulk" in want:
        try:
            frames["nbglm_pseudobulk"] = _nbglm_pseudobulk(counts, obs, genes, coef)
        except (ValueError, np.linalg.LinAlgError) as exc:
            frames["nbglm_pseudobulk"] = _failed(genes, "nbglm_pseudobulk", exc)
    if want & set(NBMM_VARIANTS):
        for fr in _nbmm_frames(counts, obs, genes, coef, f"~ trt{cls_term}", want):
            frames[fr["method"].iat[0]] = fr
    return pd.concat([frames[m] for m in ALL_METHODS if m in frames], ignore_index=True)[COLUMNS]
