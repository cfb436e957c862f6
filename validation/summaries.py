"""Small summaries of the results tables, shared by the report and the paper tables.

Each function takes a results table (as written by an experiment) and returns a small
DataFrame; nothing here simulates or fits. Pooled rates add counts over settings before
dividing (a pooled type-I error is Σ rejections / Σ tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from figures.tables import read_table
from validation.metrics import wilson_interval

#: runtime comparisons: (pyflashmm tools summed, anchor tool, what is compared)
SPEEDUPS = (
    (("pyflashmm_lmm",), "flashmm", "LMM fit on the same summary statistics"),
    (("pyflashmm_sumstats", "pyflashmm_lmm"), "statsmodels_mixedlm", "LMM, cells to estimates"),
    (("pyflashmm_sumstats", "pyflashmm_lmm"), "lme4", "LMM, cells to estimates"),
    (("pyflashmm_nbglm",), "deseq2", "pseudobulk NB GLM"),
    (("pyflashmm_nbglm",), "glmgampoi", "pseudobulk NB GLM"),
)


def method_label(method: str) -> str:
    """The display name of a method id (the figures' legend name)."""
    from figures.style import method_label as label

    return label(method)


def percent(x, missing: str = "n/a") -> str:
    """A proportion as a percentage with one decimal, ``missing`` for None or NaN."""
    return missing if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def load(results_dir: Path, name: str) -> pd.DataFrame | None:
    """The table ``name`` of ``results_dir``, or None when it does not exist."""
    path = Path(results_dir) / name
    return read_table(path) if path.exists() else None


def type1_by_method(t1: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Pooled type-I error per method and α (and ``by`` columns), with its Wilson interval,
    and the smallest and largest per-setting rates."""
    keys = ["method", "alpha", *by]
    g = t1.groupby(keys, sort=False)
    out = g.agg(
        n_tests=("n_tests", "sum"),
        n_rejected=("n_rejected", "sum"),
        min_rate=("type1_error", "min"),
        max_rate=("type1_error", "max"),
        n_settings=("type1_error", "size"),
    ).reset_index()
    out["rate"] = out["n_rejected"] / out["n_tests"]
    lo, hi = wilson_interval(out["n_rejected"].to_numpy(), out["n_tests"].to_numpy())
    out["ci_low"], out["ci_high"] = lo, hi
    return out


def power_by_method(ps: pd.DataFrame, threshold: float = 0.05, by: tuple[str, ...] = ()):
    """TPR, observed FDR (pooled counts) and mean ROC AUC per method at one BH threshold."""
    sel = ps[np.isclose(ps["threshold"], threshold)]
    g = sel.groupby(["method", *by], sort=False)
    out = g.agg(
        tp=("tp", "sum"), fp=("fp", "sum"), n_de=("n_de", "sum"), auc=("auc", "mean")
    ).reset_index()
    out["tpr"] = out["tp"] / out["n_de"]
    called = out["tp"] + out["fp"]
    out["observed_fdr"] = np.where(called > 0, out["fp"] / called.where(called > 0, 1), np.nan)
    return out


def agreement_by_quantity(ag: pd.DataFrame) -> pd.DataFrame:
    """Largest max and median-of-medians relative difference per comparison and quantity."""
    g = ag.groupby(["comparison", "quantity"], sort=False)
    return g.agg(
        n_values=("n_values", "sum"),
        max_rel_diff=("max_rel_diff", "max"),
        median_rel_diff=("median_rel_diff", "median"),
    ).reset_index()


def speedups(rt: pd.DataFrame) -> pd.DataFrame:
    """Anchor time / pyflashmm time at every runtime point where both ran (status ok)."""
    ok = rt[rt["status"] == "ok"]
    point = ["axis", "n_cells", "n_genes", "n_subjects"]
    wide = ok.pivot_table(index=point, columns="tool", values="seconds", aggfunc="median")
    rows = []
    for ours, anchor, what in SPEEDUPS:
        if anchor not in wide or not all(t in wide for t in ours):
            continue
        mine = wide[list(ours)].sum(axis=1, min_count=len(ours))
        ratio = wide[anchor] / mine
        for idx, r in ratio.dropna().items():
            rows.append(
                dict(zip(point, idx, strict=True))
                | {
                    "ours": "+".join(ours),
                    "anchor": anchor,
                    "what": what,
                    "ours_s": float(mine[idx]),
                    "anchor_s": float(wide.loc[idx, anchor]),
                    "ratio": float(r),
                }
            )
    return pd.DataFrame(rows)


def largest_point_speedups(sp_: pd.DataFrame) -> pd.DataFrame:
    """Per anchor, the speed-up at the largest data set measured (most cells × genes ×
    subjects; ties broken by genes)."""
    if sp_.empty:
        return sp_
    d = sp_.assign(size=sp_["n_cells"] * sp_["n_genes"] * sp_["n_subjects"])
    idx = d.sort_values(["size", "n_genes"]).groupby("anchor", sort=False).tail(1).index
    return d.loc[idx].drop(columns="size").reset_index(drop=True)
