r"""Calibration: type-I error and p-value distributions of the six methods on null data.

Data
----
For every setting (σ_b², S, m) of the grid ``var_random_effects`` × ``n_subjects`` ×
``cells_per_subject`` and every replicate r, :func:`pyflashmm.simulate_rnaseq` draws
``n_genes`` genes with no DE (``null=True``) on n = S·m cells: FLASHMM's synthetic reference,
random metadata with the S subjects nested in two arms (``samples_nested=True``: each subject
is in one arm, the S subjects split over the arms by Multinomial(S, ½), redrawn while an arm is
empty), cells spread uniformly over the subjects of their arm (so m is the *mean* number of
cells per subject), and a random intercept b_gs ~ N(0, σ_b²) per (gene, subject). The
treatment is therefore a between-subject factor, the case where ignoring the subject inflates
type-I error.

The data have ``n_clusters`` cell types (one in the shipped configs). In the simulator, cell
types differ only through DE genes (and optional library-size scaling, not used): under the
null, extra cell types would add a ``cls`` column to every design and change nothing else,
while one cell type keeps the pseudobulk method at one sample per subject, as intended.

Each (setting, replicate) is one task with its own child of ``SeedSequence(seed)`` (task order:
settings in grid order, replicates innermost), so results do not depend on ``workers``.

Methods and outputs
-------------------
:func:`validation.methods.run_methods` (``methods`` in the config; all six by default) tests
the treatment effect of every gene. ``calibration_pvalues.csv.gz`` holds every p-value (and
the gene's ``status``: why a p-value is missing, or that an LMM gene was refitted);
``calibration_type1.csv`` pools the replicates of a setting: for α ∈ ``alpha``, n_tests = the
finite p-values, n_rejected = #{p ≤ α}, type1_error = n_rejected/n_tests and its Wilson 95%
interval (:func:`validation.metrics.wilson_interval`). P-values that a method could not compute
(NaN; see :mod:`validation.methods`) are left out of n_tests and counted in ``n_failed``; for
the LMMs these are the genes whose fit did not converge, mostly ``pd_boundary`` fits (negative
σ_b² estimates, FLASHMM's semantics) with few subjects and σ_b² = 0, where they can be a large
share of the genes of a setting (the report gives the share per method).

Variants: ``quick`` runs the whole grid (4 × 4 × 3 settings), two replicates of
300 genes, all six methods (none is dropped at the largest cell counts: the cell-level GLM on
40,000 cells × 300 genes takes about 5 s); ``full`` has 1,000 genes and 10 replicates;
``tiny`` two small settings for the test suite.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

import pyflashmm as fm
from validation.config import check_config
from validation.methods import METHODS, run_methods
from validation.metrics import wilson_interval
from validation.parallel import map_replicates, replicate_seeds
from validation.provenance import write_table

NAME = "calibration"
SOURCES = ("methods", "metrics", "parallel", "provenance")
KEYS = ["var_random_effects", "n_subjects", "cells_per_subject"]


def settings(config: dict) -> list[tuple[float, int, int]]:
    """The grid (σ_b², S, m) of ``config``, in the order the tasks run."""
    return list(
        itertools.product(
            [float(v) for v in config["var_random_effects"]],
            [int(s) for s in config["n_subjects"]],
            [int(m) for m in config["cells_per_subject"]],
        )
    )


def simulate_null(var_re, n_subjects, cells_per_subject, n_genes, n_clusters, seed):
    """One null data set of the grid (see the module docstring)."""
    return fm.simulate_rnaseq(
        n_genes=int(n_genes),
        n_cells=int(n_subjects * cells_per_subject),
        n_samples=int(n_subjects),
        n_clusters=int(n_clusters),
        samples_nested=True,
        var_random_effects=float(var_re),
        null=True,
        rng=np.random.default_rng(seed),
    )


def _task(task: dict) -> pd.DataFrame:
    sim = simulate_null(task["var_random_effects"], task["n_subjects"],
                        task["cells_per_subject"], task["n_genes"], task["n_clusters"],
                        task["seed"])  # fmt: skip
    res = run_methods(sim.counts, sim.obs, treatment=sim.treatment, methods=task["methods"],
                      gene_names=sim.gene_names)  # fmt: skip
    for k in (*KEYS, "replicate"):
        res.insert(0, k, task[k])
    return res[[*KEYS, "replicate", "method", "gene", "p_value", "status"]]


def type1_table(pvalues: pd.DataFrame, alphas) -> pd.DataFrame:
    """Type-I error per setting, method and α, pooled over replicates, with Wilson 95% CIs.

    Parameters
    ----------
    pvalues : DataFrame
        One row per (setting, replicate, method, gene) with its ``p_value`` (NaN for a gene
        whose fit failed or did not converge).
    alphas : sequence of float
        Significance levels.

    Returns
    -------
    DataFrame
        ``type1_error`` = #{p ≤ α} / ``n_tests`` over the genes with a p-value; ``n_failed``
        counts the genes without one (excluded from the rate, reported so that the exclusion
        is visible); ``ci_low``/``ci_high`` the Wilson 95% interval.
    """
    rows = []
    for key, grp in pvalues.groupby([*KEYS, "method"], sort=False):
        p = grp["p_value"].to_numpy()
        ok = np.isfinite(p)
        p = p[ok]
        for a in alphas:
            rows.append((*key, float(a), p.size, int((~ok).sum()), int((p <= a).sum())))
    cols = [*KEYS, "method", "alpha", "n_tests", "n_failed", "n_rejected"]
    out = pd.DataFrame(rows, columns=cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["type1_error"] = out["n_rejected"] / out["n_tests"].where(out["n_tests"] > 0)
    out["ci_low"], out["ci_high"] = wilson_interval(out["n_rejected"], out["n_tests"])
    return out


def run(config: dict, *, results_dir: Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """Run the calibration experiment of ``config`` (checked first) over ``workers``
    processes; write ``calibration_type1.csv`` and ``calibration_pvalues.csv.gz`` to
    ``results_dir`` and return their paths (columns: validation/README.md)."""
    check_config(config, NAME, ("var_random_effects", "n_subjects", "cells_per_subject",
                                "n_genes", "replicates"), {
        "var_random_effects": (lambda v: v >= 0, "variances >= 0"),
        "n_subjects": (lambda v: int(v) >= 4, "integers >= 4 (two arms, df > 0)"),
        "cells_per_subject": (lambda v: int(v) >= 1, "integers >= 1"),
        "n_genes": (lambda v: int(v) >= 1, "an integer >= 1"),
        "replicates": (lambda v: int(v) >= 1, "an integer >= 1"),
        "alpha": (lambda v: 0 < v < 1, "levels in (0, 1)"),
    })  # fmt: skip
    methods = tuple(config.get("methods", METHODS))
    grid = settings(config)
    reps = int(config["replicates"])
    seeds = replicate_seeds(int(config["seed"]), len(grid) * reps)
    tasks = [
        {"var_random_effects": v, "n_subjects": s, "cells_per_subject": m, "replicate": r,
         "n_genes": int(config["n_genes"]), "n_clusters": int(config.get("n_clusters", 1)),
         "methods": methods, "seed": seeds[i * reps + r]}
        for i, (v, s, m) in enumerate(grid)
        for r in range(reps)
    ]  # fmt: skip
    frames = map_replicates(_task, tasks, workers=workers, progress=progress, desc=NAME)
    pvalues = pd.concat(frames, ignore_index=True)
    type1 = type1_table(pvalues, config.get("alpha", (0.01, 0.05)))
    results_dir = Path(results_dir)
    seed = int(config["seed"])
    return [
        write_table(type1, results_dir / "calibration_type1.csv", seed=seed),
        write_table(pvalues, results_dir / "calibration_pvalues.csv.gz", seed=seed),
    ]
