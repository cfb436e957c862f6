"""One call from counts to the tidy DE table: :func:`de` (methods, the pseudoreplication
warnings and the scale of ``log_fc`` are in its docstring)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from pyflashmm._checks import MissingColumnError
from pyflashmm._contrasts import as_contrasts
from pyflashmm._design import design, formula_columns, level_label, random_groupings
from pyflashmm._distributed import client_for
from pyflashmm._frontend.cluster_fits import (
    check_cells_have_counts,
    nbglm_on_cluster,
    nbmm_on_cluster,
)
from pyflashmm._frontend.inputs import CellData, open_cells, peek_values, read_csr
from pyflashmm._lmm.fit import lmm
from pyflashmm._lmm.inference import DF_METHODS, lmmtest
from pyflashmm._lmm.moderation import check_moderation_args
from pyflashmm._lmm.stats import DEFAULT_CHUNK_SIZE, summary_stats
from pyflashmm._nbglm.fit import nbglm
from pyflashmm._nbglm.inference import nbglm_test
from pyflashmm._nbmm.fit import nbmm
from pyflashmm._nbmm.inference import DF_METHODS as NBMM_DF_METHODS
from pyflashmm._nbmm.inference import nbmm_test
from pyflashmm._pseudobulk import sample_table, sum_counts, varying_example

METHODS = ("lmm", "nbmm", "nbglm", "pseudobulk")
_TRANSFORMS = (None, "log1p", "log2p1")

#: the scale of ``log_fc`` per method (and LMM transform), as recorded in ``table.attrs``
LOG_FC_SCALE = {
    ("lmm", "log2p1"): "difference of mean log2(1 + count) (LMM model scale)",
    ("lmm", "log1p"): "difference of mean ln(1 + count) (LMM model scale)",
    ("lmm", None): "difference on the scale of the values (LMM model scale)",
    "nbglm": "log2 fold change of the NB mean",
    "nbmm": "log2 fold change of the NB mean (donor random intercept; conditional = marginal)",
    "pseudobulk": "log2 fold change of the NB mean (pseudobulk samples)",
}


class PseudoreplicationWarning(UserWarning):
    """A model treats non-independent units (cells or cell types of one donor) as replicates."""


class LogTransformWarning(UserWarning):
    """A log transform is about to be applied to values that are not counts."""


def de(
    data,
    *,
    fixed: str,
    random=None,
    contrast=None,
    method: str = "lmm",
    layer: str | None = None,
    cell_type: str | None = None,
    per_cell_type: bool = True,
    transform: str | None = "log2p1",
    reml: bool | None = None,
    df: str = "auto",
    moderate: bool = False,
    robust: bool = False,
    trend: bool | None = None,
    test: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool | None = None,
    scheduler=None,
    **kwargs,
) -> pd.DataFrame:
    """Differential expression from an AnnData (or counts + obs) to a tidy result table.

    Methods:

    * ``"lmm"`` (default): FLASHMM's approach. The counts are log-transformed (``transform``,
      default log2(1 + y)), the linear mixed model y = Xβ + Σₖ Zₖbₖ + ε of
      :func:`pyflashmm.lmm` is fitted per gene from summary statistics streamed over cell
      chunks, and contrasts are tested by :func:`pyflashmm.lmmtest` (Satterthwaite df by
      default). ``random`` names the grouping of the cells (the donor), whose random effect the
      cells of one donor share.
    * ``"pseudobulk"``: counts are summed per sample (the ``random`` grouping columns, e.g. the
      donor), per sample and cell type with ``cell_type=``; one DESeq2-style NB GLM
      (:func:`pyflashmm.nbglm` with DESeq2's defaults) is fitted per cell type on that type's
      samples, as muscat and dreamlet do. ``fixed`` is evaluated on the sample table, so its
      variables must be constant within samples.
    * ``"nbmm"``: the NB mixed model (:func:`pyflashmm.nbmm`): the counts of every cell are the
      response of a negative-binomial GLM with size-factor offsets and a random intercept per
      donor (``random``, one grouping), fitted by glmmTMB's Laplace approximation, and tested
      by :func:`pyflashmm.nbmm_test` (Wald t on the donor-level df by default). Right about
      counts and about donors; slower than the other methods.
    * ``"nbglm"``: the cell-level NB GLM (:func:`pyflashmm.nbglm` with
      ``preset="single_cell"``). It has no random effect: the cells are its replicates.

    Cells of one donor are not independent: they share the donor's genotype, environment and
    sample handling. A model that treats each cell as a replicate tests a donor-level variable
    (condition, disease) with thousands of "replicates" where there are a handful of donors,
    and calls hundreds of genes without any real difference (Squair et al., Nat Commun 2021;
    Zimmerman et al., Nat Commun 2021). Use ``"pseudobulk"`` or ``"lmm"`` for donor-level
    variables; a ``random`` grouping given to ``"nbglm"`` is ignored with a
    :class:`PseudoreplicationWarning`. For the same reason a pooled pseudobulk model whose
    samples split the donors (donor × cell type pseudobulks in one model, with
    ``per_cell_type=False`` or a finer ``random`` grouping) warns.

    The scale of ``log_fc``:

    * ``"lmm"``: the contrast cᵀβ on the model's own scale. With ``transform="log2p1"`` it is
      a difference of mean log2(1 + count), not a log2 fold change of mean counts (close to
      one only for highly expressed genes); with ``"log1p"`` the same in natural logarithms;
      with ``None`` on the scale of the values.
    * ``"nbglm"`` and ``"pseudobulk"``: the log2 fold change of the NB mean (DESeq2's
      ``log2FoldChange``).

    Parameters
    ----------
    data : AnnData, str or path, or (counts, obs)
        Cells × genes counts and the cell table: an AnnData (in memory, or opened with
        ``backed="r"`` or ``anndata.experimental.read_lazy``, then read in cell chunks), a
        path to an ``.h5ad`` file (opened backed) or ``.zarr`` store, or a pair (counts
        matrix, dask array or DataFrame, obs DataFrame).
    fixed : str
        R-style fixed-effects formula on the cell table (``"~ condition + cell_type"``); for
        ``"pseudobulk"`` on the sample table.
    random : str or list of str, optional
        The donor (sample) grouping: a column (``"donor_id"``), lme4 terms
        (``"(1|donor_id)"``, ``"(1|donor_id) + (1|batch)"``, ``"(1|donor_id:cell_type)"``) or a
        list of them. Required by ``"lmm"`` and ``"pseudobulk"`` (whose samples are the
        combinations of its grouping columns); ignored, with a warning, by ``"nbglm"``.
    contrast : dict, str, list, optional
        What to test, e.g. ``{"stim_vs_ctrl": "conditionstim"}`` or
        ``{"avg": "(cell_typeB:conditionstim + cell_typeT:conditionstim)/2"}``; a dict value
        that is a list of expressions is one joint test. Default: every coefficient. Every
        contrast is tested on one fit.
    method : {"lmm", "nbmm", "pseudobulk", "nbglm"}
        See the module docstring.
    layer : str, optional
        AnnData layer holding the raw counts (e.g. ``"counts"``); default ``X``.
    cell_type : str, optional
        ``"pseudobulk"`` only: the cell-type column. One model per cell type, on that type's
        pseudobulk samples; the table gets a ``cell_type`` column and BH is applied per cell type
        and contrast. Default ``None``: samples pool every cell of a donor.
    per_cell_type : bool
        ``"pseudobulk"`` with ``cell_type``: ``False`` fits one pooled model over the (sample ×
        cell type) pseudobulks instead, with a :class:`PseudoreplicationWarning` (the cell types
        of one donor are not independent samples).

    ``transform``, ``moderate``, ``robust`` and ``trend`` apply to ``"lmm"``
    only (the NB methods ignore them); ``reml`` and ``df`` to ``"lmm"`` and ``"nbmm"``;
    ``test`` applies to the NB methods only (an error with ``"lmm"``).
    transform : {"log2p1", "log1p", None}
        ``"lmm"`` only: applied to the counts on the fly. Values that are not counts (e.g. a
        log-normalised ``X``) give a :class:`LogTransformWarning`: pass ``layer=`` naming the
        raw counts, or ``transform=None``.
    reml : bool, optional
        ``"lmm"``: REML (default) or ML. ``"nbmm"``: glmmTMB's REML (β integrated out with
        the donor effects) or ML (glmmTMB's default, about 9× faster). Default for ``"nbmm"``:
        REML for the Wald test of a Laplace fit, as its type-I error is near nominal from 6
        donors where ML's is 0.07–0.11 at α = 0.05 (``validation/results/nbmm_null``); ML for
        ``test="lrt"`` (REML likelihoods of different fixed effects are not comparable) and
        for AGQ (``n_agq > 1``), which REML does not cover.
    df : str
        ``"lmm"``: denominator degrees of freedom, one of ``"auto"``, ``"kenward-roger"``,
        ``"satterthwaite"``, ``"residual"``, ``"between"`` (see :func:`pyflashmm.lmmtest`);
        ``"auto"``: Kenward–Roger with REML, Satterthwaite with ML; ``"kenward-roger"``
        needs ``reml=True``. ``"nbmm"``: ``"auto"`` or ``"between"`` (Wald t on the
        between–within df), or ``"z"`` (normal, glmmTMB's z); see :func:`pyflashmm.nbmm_test`.
    moderate : bool
        ``"lmm"`` only: empirical-Bayes moderated t tests, which borrow strength across genes
        for the contrast's variance (limma's prior, see :func:`pyflashmm.lmmtest`); most
        useful with few donors. The prior of each contrast is in ``table.attrs["moderation"]``.
    robust : bool
        ``"lmm"`` with ``moderate``: a prior robust to outlying genes (limma's ``robust=TRUE``).
    trend : bool, optional
        ``"lmm"`` with ``moderate``: a mean–variance trend in the prior (limma-trend): log s0²
        is a natural cubic spline in each gene's mean (transformed) expression, as log-count
        variances depend on the expression level (see :func:`pyflashmm.lmmtest`). Not with
        ``robust``. Default: :func:`pyflashmm.lmmtest`'s (on when ``moderate`` is and
        ``robust`` is not).
    test : {"wald", "lrt"}, optional
        NB methods only: default ``"lrt"`` for ``"nbglm"`` (DESeq2's single-cell advice) and
        ``"wald"`` for pseudobulk and ``"nbmm"``.
    chunk_size : int
        Cells per chunk when reading counts (a dask array of counts is read in its own row
        chunks).
    progress : bool, optional
        Progress bars over cell chunks and gene blocks (default: shown for long runs; in one
        process only, none for the work of a Dask cluster).
    scheduler : None, False, str or dask.distributed.Client
        Where the work on the counts runs: ``None`` (default) on the workers of the active Dask
        client if there is one, else here; ``False`` here; a ``Client`` or a scheduler address
        on its workers. Workers read backed ``.h5ad``/``.zarr`` counts from the file
        themselves (a dask array is computed by them). Distributed: the summary statistics
        (``"lmm"``) and the pseudobulk sums (``"pseudobulk"``) over cell chunks, and the
        cell-level fits of ``"nbmm"`` and ``"nbglm"`` over gene blocks (their size factors
        computed by the workers, the NB GLM's dispersion trend fitted here between two
        rounds over the blocks); the LMM fit (on the small statistics) and the pseudobulk
        GLMs run here. The results are bitwise the same as without Dask. With Dask, the
        cell-level models take ``size_factors="poscounts"`` (the default) or an array.
    **kwargs
        Passed to :func:`pyflashmm.lmm`, :func:`pyflashmm.nbmm` or :func:`pyflashmm.nbglm`;
        for ``"nbmm"``, ``n_agq=k`` (k ≥ 2) fits by adaptive Gauss–Hermite quadrature.

    Returns
    -------
    pandas.DataFrame
        One row per (gene, contrast) — and cell type for per-cell-type pseudobulk: ``variable``,
        ``contrast``, [``cell_type``], ``log_fc``, ``se``, ``stat``, ``df``, ``p_value``,
        ``adj_p_value`` (BH over genes, per contrast and cell type), ``method``, then
        method-specific columns. ``table.attrs`` records the method, layer, transform, formulas,
        reference levels and the scale of ``log_fc``.

    Raises
    ------
    ValueError, TypeError
        Naming the argument, before any fitting: unknown methods or columns, empty contrasts,
        missing groupings, counts that the method cannot use, cells without counts at cell
        level, design variables that vary within pseudobulk samples.

    Warns
    -----
    PseudoreplicationWarning
        ``"nbglm"`` given a ``random`` grouping; a pooled pseudobulk model over cell types.
    LogTransformWarning
        ``"lmm"`` asked to log-transform non-integer values.
    """
    _check_arguments(method, fixed, contrast, cell_type, per_cell_type, transform, test, df,
                     chunk_size)  # fmt: skip
    if "reduced" in kwargs and method in ("nbglm", "pseudobulk"):
        raise TypeError(
            "reduced: de() tests every contrast against its own reduced model; for another "
            "reduced design call pyflashmm.nbglm and nbglm_test(fit, contrast, reduced=...)"
        )
    if reml is None:
        reml = _nbmm_reml_default(test, kwargs) if method == "nbmm" else True
    if not isinstance(reml, bool | np.bool_):
        raise TypeError(f"reml must be True, False or None; got {reml!r}")
    if method == "lmm":
        # trend=None is lmmtest's default, decided on the fit; the types are checked now
        check_moderation_args(moderate, robust, False if trend is None else trend)
        if df == "kenward-roger" and not reml:
            raise ValueError(
                "df='kenward-roger' is defined for REML fits: pass reml=True (CLI: drop --ml)"
            )
    cells = open_cells(data, layer)
    try:
        stack = contextlib.ExitStack()
        client = stack.enter_context(client_for(scheduler))
        stack.callback(cells.close)
    except BaseException:
        cells.close()
        raise
    with stack:
        if cells.shape[0] != len(cells.obs):
            raise ValueError(
                f"data: counts have {cells.shape[0]} cells but obs has {len(cells.obs)} rows"
            )
        obs = _drop_unused_categories(cells.obs)
        if cell_type is not None and cell_type not in obs.columns:
            raise MissingColumnError(
                f"cell_type: column {cell_type!r} is not in obs (columns: "
                f"{[str(c) for c in obs.columns][:20]})"
            )
        if method == "lmm":
            tests = {"df": df, "moderate": moderate, "robust": robust, "trend": trend}
            table, dsg, used_test = _de_lmm(cells, obs, fixed, random, contrast, transform,
                                            reml, tests, chunk_size, progress, kwargs,
                                            client)  # fmt: skip
        elif method == "nbmm":
            table, dsg, used_test = _de_nbmm(cells, obs, fixed, random, contrast, test, df,
                                             reml, chunk_size, progress, kwargs,
                                             client)  # fmt: skip
        elif method == "nbglm":
            table, dsg, used_test = _de_cells(cells, obs, fixed, random, contrast, test,
                                              chunk_size, kwargs, client)  # fmt: skip
        else:
            table, dsg, used_test = _de_pseudobulk(cells, obs, fixed, random, contrast, cell_type,
                                                   per_cell_type, test, chunk_size,
                                                   kwargs, client)  # fmt: skip
    table.attrs.update(
        {
            "method": method,
            "layer": layer,
            "counts": cells.where,
            "transform": transform if method == "lmm" else None,
            "fixed": fixed,
            "random": random,
            "cell_type": cell_type,
            "test": used_test,
            "log_fc_scale": LOG_FC_SCALE[(method, transform) if method == "lmm" else method],
            "df": table.attrs.get("df"),
            "reference": reference_levels(dsg),
        }
    )
    return table


# ----------------------------------------------------------------------------- argument checks


def _nbmm_reml_default(test, kwargs) -> bool:
    """REML where it is defined (a Wald test of a Laplace fit), ML elsewhere."""
    return test != "lrt" and kwargs.get("n_agq") in (None, 1)


def _check_arguments(method, fixed, contrast, cell_type, per_cell_type, transform, test, df,
                     chunk_size):  # fmt: skip
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if not isinstance(fixed, str):
        raise TypeError(f"fixed must be a formula string such as '~ condition'; got {fixed!r}")
    if isinstance(contrast, Mapping | list | tuple | str) and len(contrast) == 0:
        raise ValueError(
            "contrast is empty: give at least one contrast, or None to test every coefficient"
        )
    if cell_type is not None:
        if not isinstance(cell_type, str):
            raise TypeError(f"cell_type must be a column name or None; got {cell_type!r}")
        if method != "pseudobulk":
            raise ValueError(
                f"cell_type: only method='pseudobulk' fits one model per cell type; with "
                f"method={method!r} put the cell type in the formulas (e.g. fixed='~ "
                f"{cell_type} + {cell_type}:condition')"
            )
    if not isinstance(per_cell_type, bool | np.bool_):
        raise TypeError(f"per_cell_type must be True or False; got {per_cell_type!r}")
    if not per_cell_type and cell_type is None:
        raise ValueError("per_cell_type=False pools cell types: it needs cell_type=")
    if transform not in _TRANSFORMS:
        raise ValueError(f"transform must be one of {_TRANSFORMS}; got {transform!r}")
    if test is not None:
        if method == "lmm":
            raise ValueError("test: only the NB methods ('nbmm', 'nbglm', 'pseudobulk') take test=")
        if test not in ("wald", "lrt"):
            raise ValueError(f"test must be 'wald' or 'lrt'; got {test!r}")
    if method == "lmm" and df not in DF_METHODS:
        raise ValueError(f"df must be one of {DF_METHODS}; got {df!r}")
    if method == "nbmm" and df not in NBMM_DF_METHODS:
        raise ValueError(f"df: method='nbmm' takes 'auto', 'between' or 'z'; got {df!r}")
    if (
        not isinstance(chunk_size, int | np.integer)
        or isinstance(chunk_size, bool)
        or (chunk_size <= 0)
    ):
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")


def _drop_unused_categories(obs: pd.DataFrame) -> pd.DataFrame:
    """obs with unused categories removed (subsetting an AnnData leaves them; a design would
    otherwise get all-zero, aliased columns for them)."""
    cats = [c for c in obs.columns if isinstance(obs[c].dtype, pd.CategoricalDtype)]
    unused = [c for c in cats if (obs[c].value_counts(sort=False) == 0).any()]
    if not unused:
        return obs
    obs = obs.copy()
    for c in unused:
        obs[c] = obs[c].cat.remove_unused_categories()
    return obs


def grouping_columns(random, method: str) -> list[str]:
    """The columns whose combinations are the samples (donors) of ``random``."""
    cols: list[str] = []
    for kind, columns in random_groupings(random):
        if kind != "group" and method == "pseudobulk":
            raise ValueError(
                f"random: {random!r} has a random slope or formula; method='pseudobulk' sums the "
                "counts of each sample and needs only the sample grouping, e.g. "
                "random='donor_id' or '(1|donor_id)'"
            )
        cols.extend(c for c in columns if c not in cols)
    if not cols:
        raise ValueError(f"random: {random!r} names no grouping column")
    return cols


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _check_counts(cells: CellData, method: str, allow_non_integer: bool) -> None:
    """Counts that an NB model can use: numbers, non-negative integers unless
    ``allow_non_integer`` (first rows checked here, before any work; the fit checks every
    value)."""
    values = peek_values(cells)
    if not values.numeric:
        raise TypeError(f"data: the counts in {cells.where} are not numbers")
    bad = values.negative
    if bad is None and not allow_non_integer:
        bad = values.non_integer
    if bad is not None or values.non_finite:
        what = "NaN or Inf" if bad is None else f"values such as {bad:.6g}"
        raise ValueError(
            f"method={method!r} models raw counts, but {cells.where} holds {what}: it looks "
            "normalised or log-transformed. Pass layer= naming the raw counts (e.g. "
            "layer='counts')"
        )


# ----------------------------------------------------------------------------- the methods


def _de_lmm(cells, obs, fixed, random, contrast, transform, reml, tests, chunk_size, progress,
            kwargs, client=None):  # fmt: skip
    if random is None:
        raise ValueError(
            "random: method='lmm' needs the grouping of the cells into donors (samples), e.g. "
            "random='donor_id' or random='(1|donor_id)'"
        )
    dsg = design(obs, fixed, random, sparse_x=True)  # an atlas's dense X is mostly zeros
    values = peek_values(cells)
    if not values.numeric:
        raise TypeError(f"data: the values in {cells.where} are not numbers")
    if transform is not None:
        if values.negative is not None:
            raise ValueError(
                f"transform={transform!r} takes the logarithm of counts, but {cells.where} holds "
                f"negative values (e.g. {values.negative:.6g}); pass layer= naming the raw "
                "counts (e.g. layer='counts') or transform=None"
            )
        if values.non_integer is not None:
            warnings.warn(
                f"de(method='lmm'): {cells.where} holds non-integer values (e.g. "
                f"{values.non_integer:.6g}): they look normalised or log-transformed already, "
                f"and transform={transform!r} takes their logarithm again. Pass layer= naming "
                "the raw counts (e.g. layer='counts'), or transform=None to model the values "
                "as they are",
                LogTransformWarning,
                stacklevel=3,
            )
    stats = summary_stats(cells.counts, dsg, transform=transform, chunk_size=chunk_size,
                          gene_names=cells.gene_names, progress=progress,
                          scheduler=False if client is None else client)  # fmt: skip
    fit = lmm(stats, method="REML" if reml else "ML", progress=progress, **kwargs)
    table = lmmtest(fit, contrast, **tests)
    trended = any(table.attrs.get("moderation", {}).get("trend", []))
    kind = " (robust)" if tests["robust"] else " (trend)" if trended else ""
    used = f"{table.attrs['df']} df" + (f", moderated{kind}" if tests["moderate"] else "")
    return table, dsg, used


def _read_nonempty(cells: CellData, obs: pd.DataFrame, chunk_size: int, check: bool = True):
    """The whole count matrix (:func:`read_csr`), its cells without any count refused when
    ``check`` (a cell-level NB model gives them no size factor): one pass over the file."""
    counts = read_csr(cells, chunk_size)
    if check:
        check_cells_have_counts(np.asarray(counts.sum(axis=1)).ravel(), obs, cells.where)
    return counts


def _de_nbmm(cells, obs, fixed, random, contrast, test, df, reml, chunk_size, progress, kwargs,
             client=None):  # fmt: skip
    if random is None:
        raise ValueError(
            "random: method='nbmm' needs the grouping of the cells into donors, e.g. "
            "random='donor_id'"
        )
    blocks = random_groupings(random)
    if len(blocks) != 1 or blocks[0][0] != "group":
        raise ValueError(
            f"random: {random!r}: method='nbmm' has one random intercept (e.g. "
            "random='donor_id' or '(1|donor_id)'); crossed, nested or slope terms are not "
            "supported: use method='lmm' for those"
        )
    cols = list(blocks[0][1])
    missing = [c for c in cols if c not in obs.columns]
    if missing:
        raise MissingColumnError(f"random: column(s) {missing} not in obs")
    dsg = design(obs, fixed)
    as_contrasts(dsg.fixed_names, contrast)  # typos reported before the fit
    _check_counts(cells, "nbmm", kwargs.get("allow_non_integer", False))
    if test == "lrt" and reml:
        raise ValueError(
            "test='lrt' compares ML likelihoods: pass reml=False with method='nbmm' (CLI: "
            "--ml; REML likelihoods of different fixed effects are not comparable)"
        )
    if len(cols) == 1:
        groups = obs[cols[0]].astype(str).to_numpy()
    else:  # an interaction grouping: one label per observed combination
        groups = obs[cols].astype(str).agg(":".join, axis=1).to_numpy()
    kwargs = dict(kwargs)
    if kwargs.get("n_agq") not in (None, 1):  # de's method= is taken: n_agq alone asks for AGQ
        kwargs["method"] = "agq"
    test = "wald" if test is None else test
    used = "lrt" if test == "lrt" else f"wald ({'z' if df == 'z' else 'between'})"
    used += ", reml" if reml and test != "lrt" else ""
    if client is not None:  # gene blocks fitted by the workers
        table = nbmm_on_cluster(client, cells, obs, dsg.X_frame(), groups, contrast=contrast,
                                test=test, df=df, reml=reml, chunk_size=chunk_size,
                                kwargs=kwargs)  # fmt: skip
        return table, dsg, used
    counts = _read_nonempty(cells, obs, chunk_size,
                            isinstance(kwargs.get("size_factors", "poscounts"), str))  # fmt: skip
    fit = nbmm(counts, dsg.X_frame(), groups, gene_names=cells.gene_names, progress=progress,
               reml=bool(reml), **kwargs)  # fmt: skip
    table = nbmm_test(fit, contrast, test=test, df=df,
                      progress=progress)  # fmt: skip
    return table, dsg, used


def _de_cells(cells, obs, fixed, random, contrast, test, chunk_size, kwargs, client=None):
    if random is not None:
        cols = grouping_columns(random, "nbglm")
        warnings.warn(
            f"de(method='nbglm'): random={random!r} is ignored: the cell-level NB GLM has no "
            f"random effect and treats the cells of one {', '.join(map(repr, cols))} as "
            "independent replicates, which inflates false positives for donor-level "
            "variables (Squair et al. 2021; Zimmerman et al. 2021). Use method='pseudobulk' "
            "(counts summed per donor) or method='lmm' (a donor random effect)",
            PseudoreplicationWarning,
            stacklevel=3,
        )
    if "preset" in kwargs:
        raise TypeError(
            "preset: de(method='nbglm') fits nbglm's single-cell preset; pass its options "
            "(e.g. minmu=, size_factors=) or call pyflashmm.nbglm for another preset"
        )
    dsg = design(obs, fixed)
    _check_counts(cells, "nbglm", kwargs.get("allow_non_integer", False))
    if client is not None:  # gene blocks fitted by the workers
        _check_residual_df(dsg, "cells")
        contrasts = as_contrasts(dsg.fixed_names, contrast)
        table, used_test = nbglm_on_cluster(client, cells, obs, dsg.X_frame(), contrasts,
                                            chunk_size=chunk_size,
                                            kwargs=dict(kwargs, test=test))  # fmt: skip
        return table, dsg, used_test
    counts = _read_nonempty(cells, obs, chunk_size)
    table, used_test = _nb_fit_test(counts, dsg, contrast, cells.gene_names,
                                    dict(kwargs, preset="single_cell", test=test))  # fmt: skip
    return table, dsg, used_test


def _de_pseudobulk(cells, obs, fixed, random, contrast, cell_type, per_cell_type, test,
                   chunk_size, kwargs, client=None):  # fmt: skip
    if random is None:
        raise ValueError(
            "random: method='pseudobulk' sums the counts of each sample; name the sample "
            "grouping, e.g. random='donor_id'"
        )
    samples = grouping_columns(random, "pseudobulk")
    by = samples + ([cell_type] if cell_type is not None and cell_type not in samples else [])
    per_type = cell_type is not None and per_cell_type
    used = formula_columns(fixed, obs)
    if per_type and cell_type in used:
        raise ValueError(
            f"fixed: {fixed!r} uses the cell-type column {cell_type!r}, but method='pseudobulk' "
            "with cell_type= fits one model per cell type (as muscat and dreamlet do); drop it "
            "from the formula"
        )
    _check_counts(cells, "pseudobulk", kwargs.get("allow_non_integer", False))
    lab, groups = sample_table(obs, by)
    for col in used:
        computed = col in ("n_cells", "libsize")  # columns the pseudobulk itself adds
        if col in obs.columns and col not in groups.columns and not computed:
            a, b = varying_example(obs, lab, col)
            hint = (
                f"; to test within cell types pass cell_type={col!r}"
                if cell_type is None and not _is_numeric(obs[col])
                else ""
            )
            raise ValueError(
                f"fixed: column {col!r} varies within the pseudobulk samples (grouped by {by}): "
                f"e.g. {a!r} and {b!r} in one sample. A pseudobulk design can use only "
                f"sample-level variables{hint}"
            )
    # formula and contrasts checked once on every sample, so that a typo is reported as such
    # and not as a failure of each cell type
    dsg_all = design(_drop_unused_categories(groups), fixed)
    as_contrasts(dsg_all.fixed_names, contrast)
    sample_cols = [c for c in samples if not (per_type and c == cell_type)]
    pooled = _pooled_over(obs, sample_cols, None if per_type else cell_type)
    if pooled is not None:
        donor, within = pooled
        warnings.warn(
            f"de(method='pseudobulk'): the samples ({' × '.join(by)}) split each {donor!r} "
            f"into several pseudobulks ({within}), and one pooled model treats them as "
            f"independent although they share the {donor!r}; a {donor!r}-level variable is then "
            "tested with too many degrees of freedom (pseudoreplication). Fit one model per "
            f"cell type (random={donor!r}, cell_type=...) or use method='lmm' with "
            f"random='(1|{donor}) + (1|{donor}:{within})'",
            PseudoreplicationWarning,
            stacklevel=3,
        )
    summed, groups = sum_counts(cells, lab, groups, by, cells.gene_names, chunk_size,
                                kwargs.get("allow_non_integer", False), client)  # fmt: skip
    if not per_type:
        table, used_test = _nb_fit_test(summed, dsg_all, contrast, None,
                                        dict(kwargs, test=test), "pseudobulk samples")  # fmt: skip
        table["method"] = "pseudobulk"
        return table, dsg_all, used_test
    frames, skipped, dsg, used_test = [], [], None, None
    present = groups[cell_type]
    levels = (
        [c for c in present.cat.categories if (present == c).any()]
        if isinstance(present.dtype, pd.CategoricalDtype)
        else list(pd.unique(present))
    )
    for level in levels:
        rows = (groups[cell_type] == level).to_numpy()
        sub = _drop_unused_categories(groups.loc[rows])
        try:
            dsg_t = design(sub, fixed)
            table, test_t = _nb_fit_test(summed.loc[rows], dsg_t, contrast, None,
                                         dict(kwargs, test=test), "pseudobulk samples")  # fmt: skip
        except ValueError as exc:
            skipped.append(f"{level!r} ({int(rows.sum())} samples: {exc})")
            continue
        dsg, used_test = dsg_t, test_t
        table.insert(2, "cell_type", str(level))
        table["method"] = "pseudobulk"
        frames.append(table)
    if not frames:
        raise ValueError(
            f"cell_type: no cell type of {cell_type!r} could be fitted: " + "; ".join(skipped)
        )
    if skipped:
        warnings.warn(
            f"de(method='pseudobulk'): {len(skipped)} cell type(s) not fitted: "
            + "; ".join(skipped),
            UserWarning,
            stacklevel=3,
        )
    return pd.concat(frames, ignore_index=True), dsg, used_test


def _pooled_over(obs: pd.DataFrame, samples: list[str], cell_type: str | None):
    """(donor column, the columns that split it) when the pseudobulk samples of one pooled
    model — the ``samples`` grouping, and the cell type when it is pooled — are finer than
    every grouping column, so that a donor (the finest grouping) contributes several samples
    (its cell types, say); None otherwise."""
    cols = samples + ([cell_type] if cell_type is not None and cell_type not in samples else [])
    if len(cols) < 2:
        return None
    n_samples = len(obs[cols].drop_duplicates())
    levels = {c: obs[c].nunique() for c in samples}
    donor = max(samples, key=levels.get)  # the finest grouping: the unit of replication
    if n_samples > levels[donor]:
        return donor, " × ".join(c for c in cols if c != donor)
    return None


def _check_residual_df(dsg, what: str) -> None:
    m, p = dsg.X.shape
    if m <= p:
        raise ValueError(
            f"fixed: {dsg.spec.fixed!r} has {p} coefficients for {m} {what}: no residual "
            "degrees of freedom (the NB GLM needs more samples than coefficients)"
        )


def _nb_fit_test(counts, dsg, contrast, gene_names, kwargs, what="cells"):
    """Fit the NB GLM once and test every contrast on that fit; returns (table, test)."""
    _check_residual_df(dsg, what)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    contrasts = as_contrasts(dsg.fixed_names, contrast)
    first = dict([next(iter(contrasts.items()))])  # the fit's own test: not repeated below
    fit = nbglm(counts, dsg.X_frame(), gene_names=gene_names, contrast=first, **kwargs)
    return nbglm_test(fit, contrasts), fit.test


def reference_levels(dsg) -> dict[str, str]:
    """The reference (dropped) level of each treatment-coded factor of the fixed design."""
    if dsg is None:
        return {}
    out = {}
    names = set()
    for name in dsg.fixed_names:
        names.update(name.split(":"))
    for col, levels in dsg.spec._fixed_block.categorical_levels.items():
        if not levels:
            continue
        coded = [f"{col}{level_label(lv)}" for lv in levels]
        if coded[0] not in names and any(c in names for c in coded[1:]):
            out[str(col)] = level_label(levels[0])
    return out
