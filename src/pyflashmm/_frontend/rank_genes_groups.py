"""A :func:`pyflashmm.de` table in scanpy's ``rank_genes_groups`` layout.

scanpy stores one group per column of structured arrays (``names``, ``scores``,
``logfoldchanges``, ``pvals``, ``pvals_adj``), genes sorted by score, highest first, and a
``params`` dict; ``sc.get.rank_genes_groups_df`` and ``sc.pl.rank_genes_groups`` read it.
Here a group is a contrast (per cell type: ``"<cell type>: <contrast>"``), not a group of
cells, so the plots that look the groups up in ``obs[params["groupby"]]`` (the dot plots,
violins and heat maps of ``sc.pl.rank_genes_groups_*``) do not apply.

Scores are signed test statistics: t (LMM), Wald z (NB), and for a likelihood-ratio test,
whose χ² statistic has no sign, sign(log_fc)·√χ² (the signed root of the deviance, the z a Wald
test would give to first order). Joint (F or χ²_r) tests have no sign and are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_REQUIRED = ("variable", "contrast", "log_fc", "stat", "p_value", "adj_p_value")


def _signed_scores(table: pd.DataFrame, test) -> np.ndarray:
    stat = table["stat"].to_numpy(dtype=np.float64)
    if test == "lrt":
        with np.errstate(invalid="ignore"):
            return np.sign(table["log_fc"].to_numpy(dtype=np.float64)) * np.sqrt(stat)
    return stat


def to_rank_genes_groups(table: pd.DataFrame, adata, key: str = "rank_genes_groups") -> None:
    """Store a :func:`pyflashmm.de` table in ``adata.uns[key]`` in scanpy's layout.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`pyflashmm.de` (its ``attrs`` record the method, layer and reference levels,
        which go to ``params``).
    adata : AnnData
        Receives ``uns[key]``.
    key : str
        Default ``"rank_genes_groups"``, where scanpy's plotting functions look.

    Notes
    -----
    One group per contrast (and cell type); within a group genes are sorted by signed score,
    highest first, as scanpy does. ``logfoldchanges`` is ``log_fc``: a log2 fold change for the
    NB methods, but for the LMM a difference on the model's scale (log2(1 + count) with the
    default transform); ``params["logfoldchanges_scale"]`` says which. ``pvals_adj`` is the
    table's ``adj_p_value`` (BH per contrast and cell type).
    """
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"table: missing columns {missing} (expected a pyflashmm.de table)")
    if not isinstance(key, str) or not key:
        raise TypeError(f"key must be a non-empty string; got {key!r}")
    attrs = dict(table.attrs)
    joint = table["log_fc"].isna() & table["stat"].notna()
    table = table.loc[~joint]
    if table.empty:
        raise ValueError("table: only joint tests, which have no signed score to rank by")
    if "cell_type" in table.columns:
        groups = table["cell_type"].astype(str) + ": " + table["contrast"].astype(str)
        groupby = "cell_type: contrast"
    else:
        groups = table["contrast"].astype(str)
        groupby = "contrast"
    scores = _signed_scores(table, attrs.get("test"))
    names = list(dict.fromkeys(groups))
    rows = {g: np.flatnonzero((groups == g).to_numpy()) for g in names}
    n = min(r.size for r in rows.values())
    fields = {
        "names": (table["variable"].astype(str).to_numpy(dtype=object), "O"),
        "scores": (scores, "f4"),
        "logfoldchanges": (table["log_fc"].to_numpy(dtype=np.float64), "f4"),
        "pvals": (table["p_value"].to_numpy(dtype=np.float64), "f8"),
        "pvals_adj": (table["adj_p_value"].to_numpy(dtype=np.float64), "f8"),
    }
    order = {}
    for g, r in rows.items():
        s = scores[r]
        key_ = np.where(np.isnan(s), -np.inf, s)  # NaN scores last
        order[g] = r[np.argsort(-key_, kind="stable")][:n]
    result = {}
    for field, (values, dtype) in fields.items():
        arr = np.empty(n, dtype=[(g, dtype) for g in names])
        for g in names:
            arr[g] = values[order[g]]
        result[field] = arr
    reference = attrs.get("reference") or {}
    result["params"] = {
        "groupby": groupby,
        "reference": ", ".join(f"{k}={v}" for k, v in reference.items()) or "rest",
        "method": f"pyflashmm {attrs.get('method', 'de')}"
        + (f" ({attrs['test']})" if attrs.get("test") else ""),
        "use_raw": False,
        "layer": attrs.get("layer"),
        "corr_method": "benjamini-hochberg",
        "logfoldchanges_scale": attrs.get("log_fc_scale", "see the table's method"),
    }
    adata.uns[key] = result
