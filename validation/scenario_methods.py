r"""Every method of the comparison on one data set: p-values, log fold changes and runtimes.

:func:`test_data` runs the methods of :data:`METHODS` on an AnnData of counts with a donor, a
cell-type and a condition column (donors nested in the condition), and returns one tidy table.
The mock nulls (:mod:`validation.mock_null`: random donor splits of a real ``.h5ad``) and the
scenario experiments (:mod:`validation.scenario_null`, and the power experiment) call it.

The question
------------
``question="within"``: the condition's effect within cell type t (the ``cell_type:condition``
question; scenarios with ``contrast="within"``), for every tested type t.
``question="average"``: one effect shared by every cell type (``contrast="average"``), tested
once (``cell_type == "all"`` in the table).

Only cell types with at least ``min_cells`` cells in each arm enter (both questions); the others
are left out with a note. ``cell_types`` picks which of them are tested (``within``) or used
(``average``).

The methods (ids of :data:`METHODS`; y = log2(1 + count), L = the cell's total count)
---------------------------------------------------------------------------------------
LMMs of the package, one fit of **all** the cells of the entering cell types,
``random="(1|donor)"``, REML (:func:`pyflashmm.de`, as the README's ``cls:trt`` example):
within: ``fixed="~ log(libsize) + cell_type + cell_type:condition"``, contrast: the
interaction column of cell type t (one fit, every type's contrast tested on it; the cell
types share the donor effect and the coefficient of log L); average: ``fixed="~
log(libsize) + cell_type + condition"``, contrast: the condition column.

``lmm``
    the package's default test: Kenward–Roger df (``df="auto"`` on a REML fit), ``nonneg=
    "refit"``.
``lmm_satterthwaite``
    ``df="satterthwaite"`` (lmerTest's).
``lmm_between_within``
    ``df="between"``: for a between-donor column (the average question's condition) the
    donors minus the rank of the donor-level columns; the within question's interaction
    column varies within donors (a donor's cells of type t against its other cells), so the
    package's rule gives it the cell-level n − q − (p − r_b).
``lmm_moderated``
    ``moderate=True``: empirical-Bayes moderated t with the mean–variance trend (limma-trend's
    prior on each contrast's variance), Kenward–Roger df.
``lm``
    the same fixed effects without the donor effect: ordinary least squares from the same
    summary statistics (:func:`validation.methods.ols_from_stats`), t on n − p df; cells as
    replicates.

NB models of the package:

``nbmm``
    :func:`pyflashmm.de` with ``method="nbmm"``: the NB GLMM on every cell of the entering
    types, poscounts size factors as offsets, a donor random intercept, ``fixed="~ cell_type +
    cell_type:condition"`` (within) or ``"~ cell_type + condition"`` (average), the package's
    default test (REML, Wald t on the between–within df: for the within interaction, as for the
    LMM, a cell-level df).
``pseudobulk``
    :func:`pyflashmm.de` with ``method="pseudobulk"``: DESeq2-style NB GLM on counts summed per
    donor; within: on cell type t's donor pseudobulks, ``~ condition`` (muscat's default);
    average: one pseudobulk per donor (its cells of every entering type summed), ``~
    condition``. (Pooling the donor × cell-type pseudobulks in one model, ``~ cell_type +
    condition``, takes a donor's pseudobulks as independent samples and rejects far more than
    α of the null genes on FLASHMM's model: that is pseudoreplication, not the pseudobulk
    approach, and ``dream`` is the model of those pseudobulks with a donor effect.)
``nbglm_cells``
    :func:`pyflashmm.de` with ``method="nbglm"`` (single-cell preset, LRT): the cells of type
    t, ``~ condition`` (within); every cell, ``~ cell_type + condition`` (average). Cells as
    replicates (pseudoreplication).
``wilcoxon``
    scanpy's recipe: counts scaled to 10⁴ per cell and log1p-transformed, a two-sided
    Wilcoxon rank-sum test per gene between the cells of the two arms (cell type t's cells,
    or every cell for the average question) by :func:`scipy.stats.mannwhitneyu`'s normal
    approximation, which corrects for ties and for continuity (scanpy's default,
    ``tie_correct=False``, corrects for neither: with mostly-zero genes its p-values are
    larger); ``log_fc`` as scanpy's ``logfoldchanges``: log2 of (expm1(mean x̄_tested) +
    10⁻⁹)/(expm1(x̄_reference) + 10⁻⁹), x̄ the arm's mean of the log1p values.
``dream``
    dream-style (Hoffman & Roussos 2021, variancePartition's ``voomWithDreamWeights`` +
    ``dream``): counts summed per donor × cell type (pseudobulks without counts dropped),
    log-CPM = log2((y + 0.5)/(N + 1)·10⁶) with N the pseudobulk's total count (no TMM
    factors); an unweighted LMM per gene on log-CPM with the design below gives the residual
    sd s_g and the conditional fitted values; voom's trend (Law et al. 2014): lowess (span
    0.5, 3 iterations) of √s_g on the gene's mean log count (mean log-CPM + mean log2(N + 1)
    − log2 10⁶), and weights w = 1/trend(fitted log count)⁴ per observation. Then per gene the
    weighted LMM, fitted as the unweighted one on rows scaled by √w (y* = W^{1/2}y, X* =
    W^{1/2}X, Z* = W^{1/2}Z: summary statistics of the scaled data, :func:`pyflashmm.lmm`,
    REML with σ_b² ≥ 0 as lme4), the contrast tested with Satterthwaite df
    (:func:`pyflashmm.lmmtest`; no eBayes). Design on all pseudobulks, random ``(1|donor)``:
    ``~ cell_type + cell_type:condition`` (within; contrast: type t's interaction) or
    ``~ cell_type + condition`` (average). Genes without counts get ``all_zero``.

R methods (:mod:`validation.r_de`, skipped with a note when R or a package is missing):

``edger_ql``, ``limma_voom``, ``deseq2_r``
    the same pseudobulks as ``pseudobulk`` (within: cell type t's donor sums, ``~ group``;
    average: one sum per donor, ``~ group``; ``group`` = 1 for the tested arm), in one R
    process per test.
``glmmtmb``, ``lmertest``
    per gene on the cells (cell type t's cells, or every cell with ``cell_type`` as a
    covariate), donor random intercept, on a random subset of ``r_gene_subset`` genes with
    counts (drawn from ``seed``; the same subset for every test of the call); glmmTMB's
    offsets are the poscounts size factors of every entering cell.

Timings: ``seconds`` is the wall time (:func:`time.perf_counter`) of the fit that produced the
row: for one-fit methods (the LMMs, ``lm``, ``nbmm``, ``dream``) the one fit of every tested
cell type, repeated on each type's rows; for per-type methods that type's fit. R methods
report R's own elapsed time of the method (R's start-up, package loading and input writing
excluded).

Failures are data: a method that fails gets NaN p-values with ``status`` ``failed: <reason>``
on its rows and the others proceed; per-gene fit warnings are silenced (the per-gene
``status`` keeps what happened; the warnings' messages go to the notes).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

import pyflashmm as fm

__all__ = [
    "COLUMNS",
    "METHODS",
    "PYTHON_METHODS",
    "R_METHODS",
    "DreamInputs",
    "MethodSpec",
    "PreparedData",
    "cells_with_counts",
    "check_methods",
    "dream_inputs",
    "default_methods",
    "prepare",
    "r_unavailable",
    "test_data",
    "voom_weights",
    "weighted_lmm_stats",
    "wilcoxon",
]

#: the columns of :func:`test_data`'s table
COLUMNS = ["method", "cell_type", "gene", "p_value", "log_fc", "lfc_scale", "status", "seconds"]
QUESTIONS = ("within", "average")
#: the internal column names and levels of the working copy of the data
_DONOR, _TYPE, _GROUP, _REF, _TESTED = "donor", "cell_type", "group", "A", "B"
_COEF = f"{_GROUP}{_TESTED}"

_LOG1P_SCALE = "difference of mean log2(1 + count) (the LMM's estimate; not a log fold change)"
_NB_SCALE = "log2 fold change of the NB mean"
_CPM_SCALE = "difference of mean log2-CPM (voom scale; a log2 fold change of normalised expression)"


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison.

    ``run(data, names)`` fits the methods ``names`` (those of one ``batch``, run together: the
    R methods of one script share a process) on a :class:`PreparedData` and returns
    {name: [piece, …]}, one piece per tested cell type (columns ``cell_type``, ``gene``,
    ``p_value``, ``log_fc``, ``status``, ``seconds``).
    """

    name: str
    label: str
    family: str
    lfc_scale: str
    r_packages: tuple[str, ...]
    run: Callable = field(repr=False)
    batch: str = ""


# ----------------------------------------------------------------------------- data


def cells_with_counts(adata, layer):
    """``adata`` with an obs column ``libsize`` (each cell's total count, unless it has one),
    without the cells that have no count (their log library size is not finite)."""
    if "libsize" not in adata.obs.columns:
        adata.obs["libsize"] = np.asarray(_counts_of(adata, layer).sum(axis=1)).ravel()
    return adata[adata.obs["libsize"] > 0].copy()


def _counts_of(adata, layer):
    m = adata.X if layer is None else adata.layers[layer]
    return sp.csr_matrix(m) if sp.issparse(m) else sp.csr_matrix(np.asarray(m))


@dataclass
class PreparedData:
    """The working copy of one data set: counts (CSR, cells × genes) of the entering cells, the
    cell table with the columns ``donor``, ``cell_type`` (codes), ``group`` (``A`` reference,
    ``B`` tested) and ``libsize``, the genes, and what is tested."""

    counts: sp.csr_matrix
    obs: pd.DataFrame
    genes: list[str]
    type_label: dict[str, str]  # code → the data's cell-type label
    test_codes: list[str]  # within: the tested types' codes; average: []
    question: str
    seed: int
    r_gene_subset: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def fit_codes(self) -> list[str]:
        return list(self.obs[_TYPE].cat.categories)

    @property
    def tests(self) -> list[str]:
        """The contrast names: the tested types' codes (within) or ``["all"]``."""
        return list(self.test_codes) if self.question == "within" else ["all"]

    def label(self, key: str) -> str:
        return "all" if key == "all" else self.type_label[key]

    @cached_property
    def adata(self):
        import anndata as ad

        return ad.AnnData(X=self.counts, obs=self.obs,
                          var=pd.DataFrame(index=pd.Index(self.genes)))  # fmt: skip

    def cells_of(self, code: str) -> np.ndarray:
        return (self.obs[_TYPE] == code).to_numpy()

    @cached_property
    def pseudobulk(self) -> tuple[np.ndarray, pd.DataFrame]:
        """Counts summed per donor × cell type (samples × genes, float64) and the sample table
        (``donor``, ``cell_type``, ``group``, ``n_cells``, ``libsize``); samples without any
        count dropped."""
        summed, groups = fm.pseudobulk(self.counts, self.obs[[_DONOR, _TYPE, _GROUP]],
                                       by=[_DONOR, _TYPE], gene_names=self.genes)  # fmt: skip
        keep = (groups["libsize"] > 0).to_numpy()
        groups = groups.loc[keep].reset_index(drop=True)
        for c in (_DONOR, _TYPE, _GROUP):
            groups[c] = groups[c].cat.remove_unused_categories()
        return summed.to_numpy(dtype=np.float64)[keep], groups

    @cached_property
    def size_factors(self) -> np.ndarray:
        return fm.size_factors(self.counts, "poscounts")

    @cached_property
    def r_genes(self) -> np.ndarray:
        """Column indices of the genes of the R cell-level models (sorted)."""
        expressed = np.flatnonzero(np.diff(self.counts.tocsc().indptr) > 0)
        k = expressed.size if self.r_gene_subset is None else min(self.r_gene_subset,
                                                                  expressed.size)  # fmt: skip
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(expressed, size=k, replace=False))


def prepare(adata, *, donor, cell_type, condition, levels=None, layer=None, question="within",
            cell_types=None, min_cells=10, r_gene_subset=50, seed=0) -> PreparedData:  # fmt: skip
    """:func:`test_data`'s working copy of ``adata`` (the arguments are its own): ValueError
    naming the argument for a missing column or layer, bad levels, a donor in both arms."""
    obs = adata.obs
    for arg, col in (("donor", donor), ("cell_type", cell_type), ("condition", condition)):
        if col not in obs.columns:
            raise ValueError(f"{arg}: no column {col!r} in obs (columns: "
                             f"{[str(c) for c in obs.columns][:12]})")  # fmt: skip
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer: no layer {layer!r} (layers: {list(adata.layers)})")
    if question not in QUESTIONS:
        raise ValueError(f"question must be one of {QUESTIONS}; got {question!r}")
    cond = obs[condition].astype(str)
    if levels is None:
        cats = (list(obs[condition].cat.categories)
                if isinstance(obs[condition].dtype, pd.CategoricalDtype)
                else sorted(cond.unique()))  # fmt: skip
        if len(cats) != 2:
            raise ValueError(f"levels: {condition!r} has {len(cats)} levels; name the two "
                             "compared, levels=(reference, tested)")  # fmt: skip
        levels = cats
    levels = tuple(str(v) for v in levels)
    if len(levels) != 2 or levels[0] == levels[1] or not set(levels) <= set(cond):
        raise ValueError(f"levels must be two distinct levels of {condition!r} "
                         f"(it has {sorted(cond.unique())[:10]}); got {levels!r}")  # fmt: skip
    notes = []
    counts = _counts_of(adata, layer)
    libsize = (np.asarray(obs["libsize"], dtype=np.float64) if "libsize" in obs.columns
               else np.asarray(counts.sum(axis=1), dtype=np.float64).ravel())  # fmt: skip
    in_levels = cond.isin(levels).to_numpy()
    keep = in_levels & (libsize > 0)
    if (in_levels & ~keep).any():
        notes.append(f"{int((in_levels & ~keep).sum())} cells without counts left out")
    donors = obs[donor].astype(str).to_numpy()
    arm = np.where(cond.to_numpy() == levels[1], _TESTED, _REF)
    types = obs[cell_type].astype(str).to_numpy()
    per_donor = pd.Series(arm[keep]).groupby(donors[keep]).nunique()
    if (per_donor > 1).any():
        raise ValueError(
            f"condition: donors must be nested in {condition!r}; "
            f"{per_donor.index[per_donor > 1][:3].tolist()} are in both arms"
        )
    n = pd.crosstab(types[keep], arm[keep]).reindex(columns=[_REF, _TESTED], fill_value=0)
    order = (list(obs[cell_type].cat.categories)
             if isinstance(obs[cell_type].dtype, pd.CategoricalDtype)
             else sorted(n.index))  # fmt: skip
    order = [str(t) for t in order if str(t) in n.index]
    eligible = [t for t in order if n.loc[t].min() >= min_cells]
    if len(eligible) < len(order):
        notes.append(f"cell types with fewer than {min_cells} cells in an arm left out: "
                     f"{[t for t in order if t not in eligible]}")  # fmt: skip
    if cell_types is not None:
        wanted = [str(t) for t in cell_types]
        missing = [t for t in wanted if t not in eligible]
        if missing:
            notes.append(f"requested cell types not tested (absent or < {min_cells} cells in "
                         f"an arm): {missing}")  # fmt: skip
        chosen = [t for t in eligible if t in wanted]
    else:
        chosen = eligible
    used = eligible if question == "within" else chosen
    code = {t: f"T{i + 1}" for i, t in enumerate(used)}
    keep &= np.isin(types, used)
    idx = np.flatnonzero(keep)
    wobs = pd.DataFrame(
        {_DONOR: pd.Categorical(donors[idx]),
         _TYPE: pd.Categorical([code[t] for t in types[idx]], categories=[code[t] for t in used]),
         _GROUP: pd.Categorical(arm[idx], categories=[_REF, _TESTED]),
         "libsize": libsize[idx]},
        index=pd.Index([str(i) for i in range(idx.size)]),
    )  # fmt: skip
    counts = counts[idx]
    counts.sort_indices()
    return PreparedData(
        counts=counts,
        obs=wobs,
        genes=[str(g) for g in adata.var_names],
        type_label={c: t for t, c in code.items()},
        test_codes=[code[t] for t in chosen] if question == "within" else [],
        question=question,
        seed=int(seed),
        r_gene_subset=None if r_gene_subset is None else int(r_gene_subset),
        notes=notes,
    )


# ----------------------------------------------------------------------------- helpers


def _piece(cell_type, genes, p, lfc, status, seconds) -> pd.DataFrame:
    G = len(genes)
    return pd.DataFrame({
        "cell_type": cell_type, "gene": list(genes),
        "p_value": np.asarray(p, dtype=np.float64), "log_fc": np.asarray(lfc, dtype=np.float64),
        "status": np.broadcast_to(np.asarray(status, dtype=object), (G,)),
        "seconds": float(seconds)})  # fmt: skip


def _failed_piece(cell_type, genes, exc: BaseException, seconds=np.nan) -> pd.DataFrame:
    nan = np.full(len(genes), np.nan)
    msg = f"failed: {type(exc).__name__}: {exc}".replace("\n", " ")[:200]
    return _piece(cell_type, genes, nan, nan, msg, seconds)


def _from_table(data: PreparedData, tab: pd.DataFrame, key: str, seconds) -> pd.DataFrame:
    """The piece of contrast ``key`` of a tidy :func:`pyflashmm.de` / ``lmmtest`` table."""
    t = tab[tab["contrast"].astype(str) == key].set_index("variable").reindex(data.genes)
    status = t["status"].astype(object).where(t["status"].notna(), "missing").astype(str)
    return _piece(data.label(key), data.genes, t["p_value"], t["log_fc"], status.to_numpy(),
                  seconds)  # fmt: skip


def _design_terms(data: PreparedData, libsize: bool) -> tuple[str, dict[str, str]]:
    """The fixed formula of the one-fit models on the working columns, and {contrast name:
    the tested column}."""
    terms = ["log(libsize)"] if libsize else []
    several = len(data.fit_codes) > 1
    if data.question == "within":
        if several:
            terms += [_TYPE, f"{_TYPE}:{_GROUP}"]
            cols = {c: f"{_TYPE}{c}:{_COEF}" for c in data.test_codes}
        else:
            terms += [_GROUP]
            cols = {c: _COEF for c in data.test_codes}
    else:
        terms += ([_TYPE] if several else []) + [_GROUP]
        cols = {"all": _COEF}
    return "~ " + " + ".join(terms), cols


def _contrast_frame(names, cols: dict[str, str]) -> pd.DataFrame:
    names = list(names)
    L = pd.DataFrame(0.0, index=names, columns=list(cols))
    for key, col in cols.items():
        if col not in names:
            raise ValueError(f"column {col!r} not in the design {names}")
        L.loc[col, key] = 1.0
    return L


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _per_type(data: PreparedData, fit_one) -> list[pd.DataFrame]:
    """``fit_one(mask or None) -> (p, lfc, status)`` for every test (the cells of each tested
    type, or every cell for the average question), each timed; a failing test gives a failed
    piece and the next one proceeds."""
    out = []
    for key in data.tests:
        mask = None if key == "all" else data.cells_of(key)
        t0 = time.perf_counter()
        try:
            p, lfc, status = fit_one(mask)
            out.append(_piece(data.label(key), data.genes, p, lfc, status,
                              time.perf_counter() - t0))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a failing test is data
            out.append(_failed_piece(data.label(key), data.genes, exc, time.perf_counter() - t0))
    return out


def _table_columns(tab: pd.DataFrame, genes) -> tuple:
    t = tab.set_index("variable").reindex(genes)
    status = t["status"].astype(object).where(t["status"].notna(), "missing").astype(str)
    return t["p_value"].to_numpy(np.float64), t["log_fc"].to_numpy(np.float64), status.to_numpy()


# ----------------------------------------------------------------------------- Python methods


def _lmm(data: PreparedData, **test_kw) -> list[pd.DataFrame]:
    fixed, cols = _design_terms(data, libsize=True)
    L = _contrast_frame(fm.design(data.obs, fixed).fixed_names, cols)
    tab, secs = _timed(fm.de, data.adata, fixed=fixed, random=f"(1|{_DONOR})", contrast=L,
                       progress=False, **test_kw)  # fmt: skip
    return [_from_table(data, tab, key, secs) for key in cols]


def _lm(data: PreparedData) -> list[pd.DataFrame]:
    from validation.methods import ols_from_stats

    fixed, cols = _design_terms(data, libsize=True)
    t0 = time.perf_counter()
    dsg = fm.design(data.obs, fixed, random=f"(1|{_DONOR})")
    st = fm.summary_stats(data.counts, dsg, transform="log2p1", gene_names=data.genes)
    frames = {key: ols_from_stats(st, col) for key, col in cols.items()}
    secs = time.perf_counter() - t0
    return [_piece(data.label(k), data.genes, f["p_value"], f["log_fc"], f["status"].to_numpy(),
                   secs) for k, f in frames.items()]  # fmt: skip


def _nbmm(data: PreparedData) -> list[pd.DataFrame]:
    fixed, cols = _design_terms(data, libsize=False)
    L = _contrast_frame(fm.design(data.obs, fixed).fixed_names, cols)
    tab, secs = _timed(fm.de, data.adata, method="nbmm", fixed=fixed, random=_DONOR, contrast=L,
                       progress=False)  # fmt: skip
    return [_from_table(data, tab, key, secs) for key in cols]


def _pseudobulk(data: PreparedData) -> list[pd.DataFrame]:
    def fit(mask):
        if mask is not None:  # within: cell type t's donor pseudobulks, ~ condition
            tab = fm.de(data.adata[mask], method="pseudobulk", random=_DONOR,
                        fixed=f"~ {_GROUP}", contrast={"c": _COEF}, progress=False)  # fmt: skip
        else:  # average: one pseudobulk per donor (its cells of every entering type summed)
            tab = fm.de(data.adata, method="pseudobulk", random=_DONOR,
                        fixed=f"~ {_GROUP}", contrast={"c": _COEF}, progress=False)  # fmt: skip
        return _table_columns(tab, data.genes)

    return _per_type(data, fit)


def _nbglm_cells(data: PreparedData) -> list[pd.DataFrame]:
    def fit(mask):
        several = mask is None and len(data.fit_codes) > 1
        sub = data.adata if mask is None else data.adata[mask]
        tab = fm.de(sub, method="nbglm", fixed=f"~ {_TYPE} + {_GROUP}" if several
                    else f"~ {_GROUP}", contrast={"c": _COEF}, progress=False)  # fmt: skip
        return _table_columns(tab, data.genes)

    return _per_type(data, fit)


#: genes per block of the Wilcoxon test's densified log-normalised values
_WILCOXON_BLOCK = 512


def wilcoxon(counts, in_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scanpy's recipe (see the module docstring) on ``counts`` (cells × genes) between the
    cells ``in_b`` (tested) and the others: (p-values, scanpy's ``logfoldchanges``). Genes
    constant in both groups get NaN p-values."""
    counts = sp.csr_matrix(counts)
    in_b = np.asarray(in_b, dtype=bool)
    lib = np.asarray(counts.sum(axis=1)).ravel()
    x = (sp.diags(1e4 / np.maximum(lib, 1.0)) @ counts).tocsc()
    x.data = np.log1p(x.data)
    G = counts.shape[1]
    p, lfc = np.empty(G), np.empty(G)
    for a in range(0, G, _WILCOXON_BLOCK):
        b = min(G, a + _WILCOXON_BLOCK)
        xb = x[:, a:b].toarray()
        with np.errstate(invalid="ignore", divide="ignore"):
            res = stats.mannwhitneyu(xb[in_b], xb[~in_b], axis=0, method="asymptotic")
        pb = np.asarray(res.pvalue, dtype=np.float64)
        pb[(xb[in_b].std(axis=0) == 0) & (xb[~in_b].std(axis=0) == 0)] = np.nan  # constant
        p[a:b] = pb
        mb, ma = xb[in_b].mean(axis=0), xb[~in_b].mean(axis=0)
        lfc[a:b] = np.log2((np.expm1(mb) + 1e-9) / (np.expm1(ma) + 1e-9))
    return p, lfc


def _wilcoxon(data: PreparedData) -> list[pd.DataFrame]:
    tested = (data.obs[_GROUP] == _TESTED).to_numpy()

    def fit(mask):
        mask = np.ones(len(tested), bool) if mask is None else mask
        p, lfc = wilcoxon(data.counts[mask], tested[mask])
        return p, lfc, np.where(np.isnan(p), "constant", "ok")

    return _per_type(data, fit)


# ----------------------------------------------------------------------------- dream


def voom_weights(logcpm: np.ndarray, lib: np.ndarray, fitted: np.ndarray, sigma: np.ndarray,
                 span: float = 0.5) -> np.ndarray:  # fmt: skip
    """voom's precision weights (Law et al. 2014; ``voomWithDreamWeights``' recipe).

    ``logcpm``: samples × genes log2-CPM; ``lib``: the samples' library sizes; ``fitted``:
    samples × genes fitted log2-CPM; ``sigma``: each gene's residual sd. The trend is the lowess
    (``span``, 3 robustness iterations, δ = 1% of the range, as R's ``lowess``) of √σ_g on
    x_g = mean log-CPM + mean log2(lib + 1) − log2 10⁶, linearly interpolated and constant
    beyond the ends (R's ``approxfun(rule = 2)``); the weight of an observation is
    1/trend(fitted log count)⁴ with fitted log count = fitted + log2(lib + 1) − log2 10⁶.
    Genes with a non-finite σ are left out of the trend.
    """
    from statsmodels.nonparametric.smoothers_lowess import lowess

    shift = np.log2(lib + 1.0) - np.log2(1e6)
    sx = logcpm.mean(axis=0) + shift.mean()
    sy = np.sqrt(sigma)
    ok = np.isfinite(sx) & np.isfinite(sy)
    if ok.sum() < 3:
        raise ValueError(f"voom: {int(ok.sum())} genes with a residual sd: no trend")
    xs = sx[ok]
    curve = lowess(sy[ok], xs, frac=span, it=3, delta=0.01 * float(np.ptp(xs)))
    fitted_count = fitted + shift[:, None]
    trend = np.interp(fitted_count, curve[:, 0], curve[:, 1])
    return 1.0 / trend**4


def weighted_lmm_stats(y: np.ndarray, X: np.ndarray, Z: np.ndarray, w: np.ndarray, *,
                       fixed_names, random_names, gene_names) -> fm.SummaryStats:  # fmt: skip
    """Summary statistics of the LMM with observation weights ``w`` of one gene: those of the
    unweighted LMM on the rows scaled by √w (y* = W^{1/2}y, X* = W^{1/2}X, Z* = W^{1/2}Z),
    whose REML/ML estimates are the weighted model's (Var ε = σ²W⁻¹)."""
    sw = np.sqrt(np.asarray(w, dtype=np.float64))
    ys, Xs, Zs = y * sw, X * sw[:, None], Z * sw[:, None]
    return fm.SummaryStats(
        XX=Xs.T @ Xs, XY=(Xs.T @ ys)[:, None], ZX=Zs.T @ Xs, ZY=(Zs.T @ ys)[:, None],
        ZZ=Zs.T @ Zs, Ynorm=np.array([ys @ ys]), n=int(len(y)), d=np.array([Z.shape[1]]),
        fixed_names=list(fixed_names), random_names=list(random_names),
        gene_names=list(gene_names),
    )  # fmt: skip


class _OneNumbaThread:
    """Numba's parallel regions on one thread inside the block (restored after)."""

    def __enter__(self):
        import numba

        self._old = numba.get_num_threads()
        numba.set_num_threads(1)

    def __exit__(self, *exc):
        import numba

        numba.set_num_threads(self._old)


@dataclass
class DreamInputs:
    """dream's data before the per-gene fits: ``logcpm`` (samples × expressed genes), the
    design (``dsg``, ``X``, dense ``Z``), the voom weights ``w`` (samples × expressed genes),
    ``expressed`` (genes with counts, length G), the contrasts ``L`` (coefficients × tests)."""

    logcpm: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    w: np.ndarray
    expressed: np.ndarray
    dsg: fm.Design
    L: pd.DataFrame


def dream_inputs(data: PreparedData) -> DreamInputs:
    """log-CPM of the donor × cell-type pseudobulks, the design and voom's weights from the
    unweighted LMM of every expressed gene (its residual sd and conditional fitted values
    Xβ̂ + Zb̂; least squares for a gene without a mixed fit)."""
    y, samples = data.pseudobulk
    fixed, cols = _design_terms(data, libsize=False)
    dsg = fm.design(samples, fixed, random=f"(1|{_DONOR})")
    X = np.asarray(dsg.X_frame(), dtype=np.float64)
    Z = np.asarray(sp.csr_matrix(dsg.Z).toarray(), dtype=np.float64)
    L = _contrast_frame(dsg.fixed_names, cols)
    lib = y.sum(axis=1)
    expressed = y.sum(axis=0) > 0
    logcpm = np.log2((y[:, expressed] + 0.5) / (lib[:, None] + 1.0) * 1e6)
    st = fm.summary_stats(logcpm, dsg, gene_names=[str(j) for j in range(logcpm.shape[1])])
    fit0 = fm.lmm(st, method="REML", nonneg=True, warn=False)
    blups = np.asarray(fm.random_effects(fit0), dtype=np.float64)  # genes × donors
    fitted = X @ fit0.coef.T + Z @ blups.T
    sigma = np.sqrt(fit0.theta[:, -1])
    bad = ~np.isfinite(fitted).all(axis=0) | ~np.isfinite(sigma)
    if bad.any():
        beta = np.linalg.lstsq(X, logcpm[:, bad], rcond=None)[0]
        fitted[:, bad] = X @ beta
        rss = ((logcpm[:, bad] - fitted[:, bad]) ** 2).sum(axis=0)
        sigma[bad] = np.sqrt(rss / max(1, X.shape[0] - X.shape[1]))
    w = voom_weights(logcpm, lib, fitted, sigma)
    return DreamInputs(logcpm, X, Z, w, expressed, dsg, L)


def _dream(data: PreparedData) -> list[pd.DataFrame]:
    t0 = time.perf_counter()
    d = dream_inputs(data)
    G = len(data.genes)
    keys = list(d.L.columns)
    p = {k: np.full(G, np.nan) for k in keys}
    lfc = {k: np.full(G, np.nan) for k in keys}
    status = np.full(G, "all_zero", dtype=object)
    Lm = d.L.to_numpy()  # p × tests: lmmtest's rows come in this order (one gene)
    with _OneNumbaThread():  # one tiny fit per gene: a thread pool's start-up would dominate
        for j, g in enumerate(np.flatnonzero(d.expressed)):
            s = weighted_lmm_stats(d.logcpm[:, j], d.X, d.Z, d.w[:, j],
                                   fixed_names=d.dsg.fixed_names,
                                   random_names=d.dsg.random_names,
                                   gene_names=[data.genes[g]])  # fmt: skip
            try:
                fit = fm.lmm(s, method="REML", nonneg=True, warn=False)
                res = fm.lmmtest(fit, Lm, df="satterthwaite")
            except (ValueError, np.linalg.LinAlgError) as exc:
                status[g] = f"failed: {type(exc).__name__}: {exc}"[:200]
                continue
            status[g] = str(fit.status[0])
            pv, est = res["p_value"].to_numpy(), res["log_fc"].to_numpy()
            for i, k in enumerate(keys):
                p[k][g], lfc[k][g] = pv[i], est[i]
    secs = time.perf_counter() - t0
    return [_piece(data.label(k), data.genes, p[k], lfc[k], status, secs) for k in keys]


# ----------------------------------------------------------------------------- R methods


def _r_de():
    """:mod:`validation.r_de`, or None when it cannot be imported."""
    try:
        from validation import r_de
    except ImportError:
        return None
    return r_de


def _r_pieces(data, key, tables: dict, names, genes=None) -> dict[str, pd.DataFrame]:
    genes = data.genes if genes is None else genes
    out = {}
    for m in names:
        t = tables[m].reindex(genes)
        status = t["status"].astype(object).where(t["status"].notna(), "missing").astype(str)
        out[m] = _piece(data.label(key), genes, t["p_value"], t["log_fc"], status.to_numpy(),
                        t.attrs.get("seconds", np.nan))  # fmt: skip
    return out


def _r_batch(data: PreparedData, names, keys, run_jobs, jobs, genes) -> dict:
    """Run ``jobs`` (one per test key of ``keys``) in one R process by ``run_jobs``; a job R
    could not run, or R failing as a whole, gives failed pieces and the rest proceed."""
    out = {m: [] for m in names}
    try:
        results = run_jobs(jobs, methods=list(names))
    except ValueError:  # a job R cannot take (named by its index): each job on its own
        results = []
        for job in jobs:
            try:
                results += run_jobs([job], methods=list(names))
            except Exception as exc:  # noqa: BLE001 - R failing is data
                results.append(exc)
    except Exception as exc:  # noqa: BLE001 - R failing is data
        results = [exc] * len(keys)
    for key, res in zip(keys, results, strict=True):
        if isinstance(res, Exception):
            pieces = {m: _failed_piece(data.label(key), genes, res) for m in names}
        else:
            pieces = _r_pieces(data, key, res, names, genes)
        for m in names:
            out[m].append(pieces[m])
    return out


def _run_r_pseudobulk(data: PreparedData, names) -> dict[str, list[pd.DataFrame]]:
    y, samples = data.pseudobulk
    jobs = []
    for key in data.tests:
        if key == "all":  # average: one pseudobulk per donor, as ``pseudobulk``
            donors = samples[_DONOR].cat.codes.to_numpy()
            yk = np.zeros((donors.max() + 1, y.shape[1]))
            np.add.at(yk, donors, y)
            arm = samples.groupby(donors, sort=True)[_GROUP].first()
        else:
            rows = (samples[_TYPE] == key).to_numpy()
            yk, arm = y[rows], samples.loc[rows, _GROUP].reset_index(drop=True)
        tab = pd.DataFrame({"sample": [f"s{i}" for i in range(len(yk))],
                            "group": (arm.to_numpy() == _TESTED).astype(float)})  # fmt: skip
        jobs.append(dict(counts=yk, samples=tab, genes=data.genes, design="~ group",
                         coef="group"))  # fmt: skip
    return _r_batch(data, names, data.tests, _r_de().run_r_pseudobulk_jobs, jobs, data.genes)


def _run_r_cells(data: PreparedData, names) -> dict[str, list[pd.DataFrame]]:
    idx = data.r_genes
    genes = [data.genes[i] for i in idx]
    if not len(idx):
        return {m: [] for m in names}
    sf = data.size_factors
    jobs = []
    for key in data.tests:
        mask = np.ones(len(data.obs), bool) if key == "all" else data.cells_of(key)
        obs = pd.DataFrame({"donor": data.obs[_DONOR].astype(str).to_numpy()[mask],
                            "group": (data.obs[_GROUP] == _TESTED).to_numpy()[mask].astype(float),
                            "libsize": data.obs["libsize"].to_numpy()[mask],
                            "size_factor": sf[mask]})  # fmt: skip
        several = key == "all" and len(data.fit_codes) > 1
        if several:
            obs[_TYPE] = data.obs[_TYPE].to_numpy()[mask]
        jobs.append(dict(counts=data.counts[mask][:, idx], obs=obs, genes=genes,
                         fixed=(_TYPE,) if several else ()))  # fmt: skip
    return _r_batch(data, names, data.tests, _r_de().run_r_cell_models_jobs, jobs, genes)


# ----------------------------------------------------------------------------- the registry


def _single(fn, **kwargs):
    def run(data, names):
        return {names[0]: fn(data, **kwargs)}

    return run


def _spec(name, label, family, lfc_scale, run, r_packages=(), batch=None) -> MethodSpec:
    return MethodSpec(name, label, family, lfc_scale, tuple(r_packages), run, batch or name)


_R_PACKAGES = {"edger_ql": ("edgeR",), "limma_voom": ("edgeR", "limma"), "deseq2_r": ("DESeq2",),
               "glmmtmb": ("glmmTMB",), "lmertest": ("lmerTest",)}  # fmt: skip

#: every method of the comparison, by id (families: ``cell_mixed`` — cells with a donor effect;
#: ``pseudobulk``; ``pseudobulk_mixed`` — pseudobulks with a donor effect;
#: ``cells_as_replicates`` — no donor effect)
METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        _spec("lmm", "LMM (Kenward–Roger)", "cell_mixed", _LOG1P_SCALE, _single(_lmm)),
        _spec("lmm_satterthwaite", "LMM (Satterthwaite)", "cell_mixed", _LOG1P_SCALE,
              _single(_lmm, df="satterthwaite")),
        _spec("lmm_between_within", "LMM (between–within df)", "cell_mixed", _LOG1P_SCALE,
              _single(_lmm, df="between")),
        _spec("lmm_moderated", "LMM (moderated, trend)", "cell_mixed", _LOG1P_SCALE,
              _single(_lmm, moderate=True)),
        _spec("lm", "LM (no donor effect)", "cells_as_replicates", _LOG1P_SCALE, _single(_lm)),
        _spec("nbmm", "NB GLMM (pyflashmm)", "cell_mixed",
              f"{_NB_SCALE} (conditional on the donor)", _single(_nbmm)),
        _spec("pseudobulk", "pseudobulk NB GLM (pyflashmm)", "pseudobulk",
              f"{_NB_SCALE} (pseudobulk samples)", _single(_pseudobulk)),
        _spec("nbglm_cells", "cell-level NB GLM", "cells_as_replicates", _NB_SCALE,
              _single(_nbglm_cells)),
        _spec("wilcoxon", "Wilcoxon (scanpy)", "cells_as_replicates",
              "log2 ratio of expm1(mean log1p-normalised expression) (scanpy's logfoldchanges)",
              _single(_wilcoxon)),
        _spec("dream", "dream-style weighted LMM", "pseudobulk_mixed", _CPM_SCALE,
              _single(_dream)),
        _spec("edger_ql", "edgeR QL", "pseudobulk", _NB_SCALE, _run_r_pseudobulk,
              _R_PACKAGES["edger_ql"], "r_pseudobulk"),
        _spec("limma_voom", "limma-voom", "pseudobulk", _CPM_SCALE, _run_r_pseudobulk,
              _R_PACKAGES["limma_voom"], "r_pseudobulk"),
        _spec("deseq2_r", "DESeq2", "pseudobulk", _NB_SCALE, _run_r_pseudobulk,
              _R_PACKAGES["deseq2_r"], "r_pseudobulk"),
        _spec("glmmtmb", "glmmTMB NB GLMM", "cell_mixed",
              f"{_NB_SCALE} (conditional on the donor)", _run_r_cells, _R_PACKAGES["glmmtmb"],
              "r_cells"),
        _spec("lmertest", "lmerTest LMM", "cell_mixed",
              "difference of mean log2(1 + count) (not a log fold change)", _run_r_cells,
              _R_PACKAGES["lmertest"], "r_cells"),
    )
}  # fmt: skip
PYTHON_METHODS = tuple(m for m, s in METHODS.items() if not s.r_packages)
R_METHODS = tuple(m for m, s in METHODS.items() if s.r_packages)


def r_unavailable(methods: Sequence[str]) -> dict[str, str]:
    """{R method of ``methods``: why it cannot run here}; empty when all can."""
    want = [m for m in methods if m in R_METHODS]
    if not want:
        return {}
    r_de = _r_de()
    if r_de is None:
        return {m: "validation.r_de cannot be imported" for m in want}
    try:
        return dict(r_de.r_methods_unavailable(want))
    except Exception as exc:  # noqa: BLE001 - a broken R probe skips the R methods
        return {m: f"R probe failed: {type(exc).__name__}: {exc}" for m in want}


def default_methods() -> tuple[str, ...]:
    """Every Python method and the R methods that can run here."""
    skip = r_unavailable(R_METHODS)
    return PYTHON_METHODS + tuple(m for m in R_METHODS if m not in skip)


def check_methods(methods) -> tuple[str, ...]:
    """``methods`` as a tuple; ValueError naming the unknown ones."""
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods: unknown {bad} or none given; choose from {list(METHODS)}")
    return methods


# ----------------------------------------------------------------------------- the engine


def test_data(
    adata,
    *,
    donor: str,
    cell_type: str,
    condition: str,
    levels: Sequence[str] | None = None,
    layer: str | None = None,
    question: str = "within",
    cell_types: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    min_cells: int = 10,
    r_gene_subset: int | None = 50,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """Run every method of ``methods`` on one data set (see the module docstring).

    Parameters
    ----------
    adata : AnnData
        Counts (``X`` or ``layers[layer]``), cells × genes; ``obs`` holds the donor, cell-type
        and condition columns (and optionally ``libsize``; default: each cell's total count).
        Cells without counts are left out (a note).
    donor, cell_type, condition : str
        obs columns; every donor lies in one arm of ``condition``.
    levels : (reference, tested), optional
        The compared levels of ``condition`` (cells of other levels are left out); default its
        two levels, the first category the reference.
    question : {"within", "average"}
        Within each cell type (``cell_type:condition``), or the effect shared by the types.
    cell_types : sequence of str, optional
        Within: the types tested (default every type with ``min_cells`` cells in each arm, all
        of which enter the one-fit models); average: the types used.
    methods : sequence of str, optional
        Ids of :data:`METHODS`; default :func:`default_methods`.
    min_cells : int
        Cell types need this many cells in each arm.
    r_gene_subset : int or None
        Genes (with counts) of the R cell-level models, drawn from ``seed``; None: every gene.
    seed : int
        Seed of the gene subset.

    Returns
    -------
    table : pandas.DataFrame
        :data:`COLUMNS`: ``method``, ``cell_type`` (the data's label, ``"all"`` for the average
        question), ``gene``, ``p_value`` (NaN where none), ``log_fc`` (on the method's
        ``lfc_scale``), ``lfc_scale``, ``status`` (``ok``, the package's per-gene status, or
        ``failed: …``), ``seconds`` (see the module docstring).
    notes : list of str
        What was left out and why: skipped R methods (no rows), cell types, cells, warnings.
    """
    methods = None if methods is None else check_methods(methods)
    if not (isinstance(min_cells, int | np.integer) and min_cells >= 1):
        raise ValueError(f"min_cells must be a positive integer; got {min_cells!r}")
    if r_gene_subset is not None and not (isinstance(r_gene_subset, int | np.integer)
                                          and r_gene_subset >= 1):  # fmt: skip
        raise ValueError(f"r_gene_subset must be a positive integer or None; got {r_gene_subset!r}")
    data = prepare(adata, donor=donor, cell_type=cell_type, condition=condition, levels=levels,
                   layer=layer, question=question, cell_types=cell_types, min_cells=min_cells,
                   r_gene_subset=r_gene_subset, seed=seed)  # fmt: skip
    notes = data.notes
    methods = default_methods() if methods is None else methods  # probes R: after the checks
    skipped = r_unavailable(methods)
    for m, why in skipped.items():
        notes.append(f"{m} skipped: {why}")
    run = [m for m in methods if m not in skipped]
    frames = []
    if data.tests:
        batches: dict[str, list[str]] = {}
        for m in run:
            batches.setdefault(METHODS[m].batch, []).append(m)
        for names in batches.values():
            spec = METHODS[names[0]]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with np.errstate(all="ignore"):
                    try:
                        result = spec.run(data, tuple(names))
                    except Exception as exc:  # noqa: BLE001 - a failing method is data
                        result = {m: [_failed_piece(data.label(k), data.genes, exc)
                                      for k in data.tests] for m in names}  # fmt: skip
            _note_warnings(notes, names, caught)
            for m in names:
                for piece in result.get(m, []):
                    frames.append(piece.assign(method=m, lfc_scale=METHODS[m].lfc_scale))
    else:
        notes.append("no cell type to test")
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS}), notes
    return pd.concat(frames, ignore_index=True)[COLUMNS], notes


test_data.__test__ = False  # not a test, for pytest's collection


def _note_warnings(notes: list[str], names, caught) -> None:
    seen: dict[str, int] = {}
    for w in caught:
        msg = f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}"
        seen[msg] = seen.get(msg, 0) + 1
    for msg, k in seen.items():
        notes.append(f"{'/'.join(names)}: {msg}" + (f" (×{k})" if k > 1 else ""))
