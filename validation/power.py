r"""Power: TPR, observed FDR, FDR–TPR curves and ROC AUC of the six methods on DE data.

Data
----
For every scope, |β| in ``abs_beta``, S in ``n_subjects`` and m in ``cells_per_subject``,
:func:`pyflashmm.simulate_rnaseq` draws ``n_genes`` genes on S·m cells with subjects nested in
two arms, subject effects b_gs ~ N(0, σ_b²) (σ_b² = ``var_random_effects``) and
round(``p_de`` · ``n_genes``) DE genes whose natural-log fold change in treated cells is
±|β| (random sign; the simulator needs min_beta < max_beta, so |β| ~ U(|β|, 1.0001|β|)).

``within_type``
    ``n_clusters`` cell types; every DE gene is DE in cell type ``"1"`` only
    (``n_de_genes_per_type={"1": n_de}``). The methods run on the cells of type ``"1"``
    only, with the design of :mod:`validation.methods` (``~ log(libsize) + trt``). This is
    the per-cell-type analysis of muscat-style pseudobulk workflows; it lets all six methods
    test the same hypothesis with the same code as the calibration experiment (which
    therefore covers their type-I error), and needs no contrasts in the NB GLMs. An
    interaction model ``cls + cls:trt`` on all cells would let the LMM borrow the shared
    subject effects from the other cell types, an advantage the pseudobulk GLM of one cell
    type cannot have.
``across_types``
    The same β in every cell type. The simulator puts each DE gene in one cell type, so the
    data are drawn with one cell type (every DE gene then affects every cell) and the
    ``n_clusters`` cell-type labels are drawn afterwards, i.i.d. uniform per cell, from the
    task's generator. In the simulator, cell types differ only in their DE genes (library
    sizes and subjects are drawn independently of them), so this is exactly FLASHMM's random
    metadata with every DE gene DE in all cell types with the same β. The methods use all
    cells and add ``cls`` to their designs.

Each (scope, |β|, S, m, replicate) is one task with its own child of ``SeedSequence(seed)``
(grid order, replicates innermost); results do not depend on ``workers``.

Metrics (:mod:`validation.metrics`)
-----------------------------------
Within each replicate and method, BH adjusts the raw p-values of all genes (the same
adjustment for every method; DESeq2's independent filtering is not applied, so methods differ
only by their tests). For each BH level t in ``thresholds``: TP and FP of the genes with
padj ≤ t, summed over replicates; ``tpr`` = ΣTP/Σn_DE and ``observed_fdr`` = ΣFP/Σ(FP + TP)
(NaN with no discovery). ``auc`` is the ROC AUC of the raw p-values (missing p-values count as
1), averaged over replicates. ``power_curves.csv.gz`` holds the observed FDR–TPR curve over
every cutoff of the adjusted p-values, replicates pooled (TP and FP summed at each cutoff),
thinned to ``curve_points`` points.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

import pyflashmm as fm
from validation.config import check_config
from validation.methods import METHODS, run_methods
from validation.metrics import bh_adjust, called, fdr_tpr_curve, roc_auc
from validation.parallel import map_replicates, replicate_seeds
from validation.provenance import write_table

NAME = "power"
SOURCES = ("methods", "metrics", "parallel", "provenance")
SCOPES = ("within_type", "across_types")
KEYS = ["scope", "abs_beta", "n_subjects", "cells_per_subject"]
#: the simulator needs min_beta < max_beta: |β| is drawn from U(|β|, BETA_BAND·|β|)
BETA_BAND = 1.0001


def settings(config: dict) -> list[tuple[str, float, int, int]]:
    """The grid (scope, |β|, S, m) of ``config``, in the order the tasks run."""
    scopes = [str(s) for s in config.get("scopes", SCOPES)]
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"config 'scopes': unknown {bad}; choose from {SCOPES}")
    return list(
        itertools.product(
            scopes,
            [float(b) for b in config["abs_beta"]],
            [int(s) for s in config["n_subjects"]],
            [int(m) for m in config["cells_per_subject"]],
        )
    )


def simulate_de(task: dict):
    """(counts, obs, treatment, is_de) of one task, restricted to the cells it analyses."""
    if task["abs_beta"] <= 0:
        raise ValueError(f"abs_beta must be > 0, got {task['abs_beta']}")
    rng = np.random.default_rng(task["seed"])
    G = int(task["n_genes"])
    n_de = int(round(task["p_de"] * G))
    K = int(task["n_clusters"])
    within = task["scope"] == "within_type"
    sim = fm.simulate_rnaseq(
        n_genes=G,
        n_cells=int(task["n_subjects"] * task["cells_per_subject"]),
        n_samples=int(task["n_subjects"]),
        n_clusters=K if within else 1,
        samples_nested=True,
        n_de_genes_per_type={"1": n_de},
        min_beta=float(task["abs_beta"]),
        max_beta=float(task["abs_beta"]) * BETA_BAND,
        direction="both",
        var_random_effects=float(task["var_random_effects"]),
        rng=rng,
    )
    is_de = sim.var["de"].to_numpy(dtype=bool)
    obs = sim.obs.copy()
    counts = sim.counts
    if within:
        keep = (obs["cls"].astype(str) == "1").to_numpy()
        obs, counts = obs.loc[keep], counts[np.flatnonzero(keep)]
    else:
        labels = [str(k + 1) for k in range(K)]
        obs["cls"] = pd.Categorical(np.asarray(labels)[rng.integers(0, K, size=len(obs))])
    return counts, obs, sim.treatment, is_de


def _task(task: dict) -> pd.DataFrame:
    counts, obs, treatment, is_de = simulate_de(task)
    res = run_methods(counts, obs, treatment=treatment, methods=task["methods"])
    res["is_de"] = np.tile(is_de, res["method"].nunique())
    for k in (*KEYS, "replicate"):
        res.insert(0, k, task[k])
    return res[[*KEYS, "replicate", "method", "gene", "is_de", "p_value"]]


def summarise(results: pd.DataFrame, thresholds, *, curve_points: int = 200):
    """The power tables from per-gene p-values.

    Parameters
    ----------
    results : DataFrame
        One row per (setting, replicate, method, gene) with ``p_value`` and ``is_de``.
    thresholds : sequence of float
        BH levels.
    curve_points : int
        Points kept per FDR–TPR curve.

    Returns
    -------
    (DataFrame, DataFrame)
        ``power_summary``: BH-adjusted within each replicate and method; TP, FP and the DE
        count summed over replicates, TPR = TP / n_DE, observed FDR = FP / (TP + FP), ROC AUC
        averaged over replicates. ``power_curves``: observed FDR and TPR over all cutoffs of
        the pooled adjusted p-values, thinned to ``curve_points``.
    """
    results = results.copy()
    results["adj_p_value"] = results.groupby([*KEYS, "replicate", "method"], sort=False)[
        "p_value"
    ].transform(lambda p: bh_adjust(p.to_numpy()))
    rows, curves = [], []
    for key, grp in results.groupby([*KEYS, "method"], sort=False):
        is_de = grp["is_de"].to_numpy(dtype=bool)
        padj = grp["adj_p_value"].to_numpy()
        auc = np.mean(
            [roc_auc(g["p_value"], g["is_de"]) for _, g in grp.groupby("replicate", sort=True)]
        )
        n_de = int(is_de.sum())
        for t in thresholds:
            tp, fp = called(padj, is_de, float(t))
            tpr = tp / n_de if n_de else np.nan
            fdr = fp / (fp + tp) if fp + tp else np.nan
            rows.append((*key, float(t), n_de, tp, fp, tpr, fdr, auc))
        fdr_c, tpr_c = fdr_tpr_curve(padj, is_de, max_points=curve_points)
        label = dict(zip([*KEYS, "method"], key, strict=True))
        curves.append(pd.DataFrame({**label, "fdr": fdr_c, "tpr": tpr_c}))
    cols = [*KEYS, "method", "threshold", "n_de", "tp", "fp", "tpr", "observed_fdr", "auc"]
    return pd.DataFrame(rows, columns=cols), pd.concat(curves, ignore_index=True)


def run(config: dict, *, results_dir: Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """Run the power experiment of ``config`` (checked first) over ``workers``
    processes; write ``power_summary.csv`` and ``power_curves.csv.gz`` to ``results_dir`` and
    return their paths (columns: validation/README.md)."""
    methods = tuple(config.get("methods", METHODS))
    grid = settings(config)
    check_config(config, NAME, ("scopes", "abs_beta", "n_subjects", "cells_per_subject",
                                "n_genes", "p_de", "n_clusters", "var_random_effects",
                                "replicates"), {
        "scopes": (lambda v: v in ("within_type", "across_types"),
                   "'within_type' or 'across_types'"),
        "abs_beta": (lambda v: v > 0, "effect sizes > 0"),
        "n_subjects": (lambda v: int(v) >= 4, "integers >= 4 (two arms, df > 0)"),
        "cells_per_subject": (lambda v: int(v) >= 1, "integers >= 1"),
        "p_de": (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
        "n_clusters": (lambda v: int(v) >= 2, "an integer >= 2 (within/across cell types)"),
        "var_random_effects": (lambda v: v >= 0, "a variance >= 0"),
        "replicates": (lambda v: int(v) >= 1, "an integer >= 1"),
        "thresholds": (lambda v: 0 < v < 1, "BH levels in (0, 1)"),
    })  # fmt: skip
    reps = int(config["replicates"])
    seeds = replicate_seeds(int(config["seed"]), len(grid) * reps)
    common = {
        "n_genes": int(config["n_genes"]),
        "p_de": float(config["p_de"]),
        "n_clusters": int(config["n_clusters"]),
        "var_random_effects": float(config["var_random_effects"]),
        "methods": methods,
    }
    tasks = [
        {**common, "scope": sc, "abs_beta": b, "n_subjects": s, "cells_per_subject": m,
         "replicate": r, "seed": seeds[i * reps + r]}
        for i, (sc, b, s, m) in enumerate(grid)
        for r in range(reps)
    ]  # fmt: skip
    frames = map_replicates(_task, tasks, workers=workers, progress=progress, desc=NAME)
    summary, curves = summarise(
        pd.concat(frames, ignore_index=True),
        config.get("thresholds", (0.01, 0.05, 0.1)),
        curve_points=int(config.get("curve_points", 200)),
    )
    results_dir = Path(results_dir)
    seed = int(config["seed"])
    return [
        write_table(summary, results_dir / "power_summary.csv", seed=seed),
        write_table(curves, results_dir / "power_curves.csv.gz", seed=seed),
    ]
