"""One call from counts to the tidy DE table: ``de(data, fixed=..., random=..., contrast=...)``.

Methods
-------
``"lmm"``
    FLASHMM's approach: log-transformed counts (``transform``, default log2(1 + y)), the
    linear mixed model of :func:`pyflashmm.lmm` fitted from summary statistics streamed over
    cell chunks, and :func:`pyflashmm.lmmtest` (Satterthwaite df by default). ``log_fc`` is on
    the model's scale (log2(1 + count) units with the default transform).
``"nbglm"``
    The cell-level DESeq2-style negative-binomial GLM (:func:`pyflashmm.nbglm` with
    ``preset="single_cell"``); ``random`` is ignored (the GLM has no random effects).
``"pseudobulk"``
    Counts summed per (``random`` grouping, cell type) with :func:`pyflashmm.pseudobulk`, then
    DESeq2's defaults on the pseudobulk samples; the ``fixed`` formula is evaluated on the
    group table, so its variables must be constant within groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pyflashmm._checks import MissingColumnError
from pyflashmm._lmm.fit import lmm
from pyflashmm._lmm.inference import lmmtest
from pyflashmm._lmm.stats import DEFAULT_CHUNK_SIZE, summary_stats
from pyflashmm._multitest import bh_adjust

_METHODS = ("lmm", "nbglm", "pseudobulk")


def _unpack(data, layer):
    """(counts, obs, gene names) from an AnnData (in memory or backed) or a (counts, obs) pair."""
    if isinstance(data, tuple | list) and len(data) == 2:
        counts, obs = data
        if not isinstance(obs, pd.DataFrame):
            raise TypeError(f"data: obs must be a pandas DataFrame; got {type(obs).__name__}")
        if isinstance(counts, pd.DataFrame):
            return counts.to_numpy(), obs, [str(c) for c in counts.columns]
        n_genes = counts.shape[1]
        return counts, obs, [f"gene{j}" for j in range(n_genes)]
    if hasattr(data, "obs") and hasattr(data, "var_names"):
        if layer is None:
            counts = data.X
        else:
            if layer not in data.layers:
                raise MissingColumnError(
                    f"layer {layer!r} not in the AnnData (layers: {list(data.layers)})"
                )
            counts = data.layers[layer]
        return counts, data.obs, [str(g) for g in data.var_names]
    raise TypeError(f"data must be an AnnData or a (counts, obs) pair; got {type(data).__name__}")


def de(
    data,
    *,
    fixed: str,
    random=None,
    contrast=None,
    method: str = "lmm",
    layer: str | None = None,
    transform: str | None = "log2p1",
    reml: bool = True,
    df: str = "satterthwaite",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cell_type: str = "cls",
    progress: bool | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Differential expression from an AnnData (or counts + obs) to a tidy result table.

    Parameters
    ----------
    data : AnnData or (counts, obs)
        Cells × genes counts (``X`` or ``layer``; dense or sparse; backed ``.h5ad`` is read in
        cell chunks) and the cell table ``obs``.
    fixed : str
        R-style fixed-effects formula, e.g. ``"~ 0 + log(libsize) + cls + cls:trt"``.
    random : str, list or None
        Random-effect grouping column(s) or one-sided formulas (see :func:`pyflashmm.design`).
    contrast : dict, str, list, optional
        What to test (see :func:`pyflashmm.lmmtest`), e.g. ``{"BvsA": "cls1:trtB"}``; default
        every coefficient.
    method : {"lmm", "nbglm", "pseudobulk"}
        See the module docstring.
    layer : str, optional
        Counts layer (default ``X``).
    transform : {"log2p1", "log1p", None}
        LMM only: transform of the counts.
    reml : bool
        LMM only: REML (default) or ML.
    df : {"satterthwaite", "residual", "between"}
        LMM only: denominator degrees of freedom.
    chunk_size : int
        Cells per chunk for the summary statistics.
    cell_type : str
        Pseudobulk only: the cell-type column grouped with ``random``.
    progress : bool, optional
        Progress bars over cell chunks and gene blocks (default: shown for long runs).
    **kwargs
        Passed to :func:`pyflashmm.lmm` or :func:`pyflashmm.nbglm`.

    Returns
    -------
    pandas.DataFrame
        One row per (gene, contrast): ``variable``, ``contrast``, ``log_fc``, ``se``, ``stat``,
        ``df``, ``p_value``, ``adj_p_value``, ``method`` and method-specific extras.
    """
    from pyflashmm._design import design

    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    counts, obs, genes = _unpack(data, layer)
    if counts.shape[0] != len(obs):
        raise ValueError(f"data: counts have {counts.shape[0]} cells but obs has {len(obs)} rows")
    if method == "lmm":
        dsg = design(obs, fixed, random)
        X = pd.DataFrame(dsg.X, columns=dsg.fixed_names)
        stats = summary_stats(
            counts, X, dsg.Z, dsg.d, transform=transform, chunk_size=chunk_size,
            gene_names=genes, progress=progress,
        )  # fmt: skip
        fit = lmm(stats, method="REML" if reml else "ML", progress=progress, **kwargs)
        return lmmtest(fit, contrast, df=df)
    if method == "nbglm":
        dsg = design(obs, fixed, None)
        return _nb_table(counts, dsg, genes, contrast, preset="single_cell", **kwargs)
    from pyflashmm._pseudobulk import pseudobulk

    if random is None or not isinstance(random, str):
        raise ValueError("method='pseudobulk' needs random = one grouping column (e.g. 'sam')")
    by = [random] if cell_type is None or cell_type == random else [random, cell_type]
    summed, groups = pseudobulk(counts, obs, by=by)
    groups = _carry_constant_columns(obs, groups, by)
    dsg = design(groups, fixed, None)
    return _nb_table(summed, dsg, genes, contrast, **kwargs)


def _carry_constant_columns(obs: pd.DataFrame, groups: pd.DataFrame, by: list[str]):
    """Add to the group table every obs column that is constant within the groups."""
    keyed = obs.groupby(by, observed=True, sort=False)
    out = groups.copy()
    for col in obs.columns:
        if col in out.columns:
            continue
        nunique = keyed[col].nunique(dropna=False)
        if (nunique <= 1).all():
            first = keyed[col].first()
            out[col] = first.reindex(pd.MultiIndex.from_frame(out[by])).to_numpy()
            if isinstance(obs[col].dtype, pd.CategoricalDtype):
                out[col] = pd.Categorical(out[col], categories=obs[col].cat.categories)
    return out


def _nb_table(counts, dsg, genes, contrast, **kwargs) -> pd.DataFrame:
    """Run the NB GLM once per contrast and stack the tidy tables."""
    from pyflashmm._contrasts import as_contrasts
    from pyflashmm._nbglm.fit import nbglm

    names = list(dsg.fixed_names)
    X = pd.DataFrame(dsg.X, columns=names)
    contrasts = as_contrasts(names, contrast, None if contrast is not None else [names[-1]])
    frames = []
    for name, Lm in contrasts.items():
        if Lm.shape[1] != 1:
            raise ValueError(f"contrast {name!r}: joint tests are LMM-only")
        fit = nbglm(counts, X, contrast=Lm[:, 0], gene_names=genes, **kwargs)
        table = fit.to_frame()
        table["contrast"] = name
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    if "adj_p_value" not in out:
        out["adj_p_value"] = out.groupby("contrast")["p_value"].transform(
            lambda p: bh_adjust(p.to_numpy())
        )
    return out


def to_rank_genes_groups(table: pd.DataFrame, adata, key: str = "pyflashmm") -> None:
    """Store a :func:`de` table in ``adata.uns[key]`` in scanpy's ``rank_genes_groups`` layout.

    One group per contrast; genes sorted by |stat| within each group (``names``, ``scores``,
    ``logfoldchanges``, ``pvals``, ``pvals_adj`` structured arrays and ``params``), the layout
    that scanpy's ``sc.pl.rank_genes_groups*`` and ``sc.get.rank_genes_groups_df`` read (scanpy
    is not a dependency, so this is tested against the layout, not against scanpy).
    """
    required = {"variable", "contrast", "log_fc", "stat", "p_value", "adj_p_value"}
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"table is missing columns {sorted(missing)}")
    contrasts = list(dict.fromkeys(table["contrast"]))
    per = {c: table[table["contrast"] == c] for c in contrasts}
    n = min(len(t) for t in per.values())
    fields = {
        "names": ("variable", "O"),
        "scores": ("stat", "f4"),
        "logfoldchanges": ("log_fc", "f4"),
        "pvals": ("p_value", "f8"),
        "pvals_adj": ("adj_p_value", "f8"),
    }
    result = {
        "params": {"groupby": "contrast", "reference": "rest", "method": "pyflashmm",
                   "use_raw": False, "layer": None, "corr_method": "benjamini-hochberg"},
    }  # fmt: skip
    for field, (col, dtype) in fields.items():
        arr = np.empty(n, dtype=[(c, dtype) for c in contrasts])
        for c, t in per.items():
            order = np.argsort(-np.abs(t["stat"].to_numpy()), kind="stable")[:n]
            arr[c] = t[col].to_numpy()[order]
        result[field] = arr
    adata.uns[key] = result
