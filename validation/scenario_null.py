r"""Calibration on the realistic scenarios: type-I error per setting, never only pooled.

For every scenario of ``scenarios`` (:data:`validation.scenarios.SCENARIOS`), number of donors
S ∈ ``n_donors``, mean cells per donor m ∈ ``cells_per_donor`` and replicate r, null data
(``simulate_scenario(..., null=True)``: no gene DE, the arms fixed and recorded) are drawn from
their own child of ``SeedSequence(seed)`` (task order: scenarios, donors, cells, replicates
innermost), and every method of ``methods`` (ids of
:data:`validation.scenario_methods.METHODS`) tests the recorded condition by
:func:`validation.scenario_methods.test_data`, asking the scenario's own question: for a
``contrast="within"`` scenario the condition within each cell type (every cell type: the null
has no DE anywhere; the ``cell_type:condition`` question), for ``contrast="average"``
(``flashmm_reference``, ``average_contrast``) the effect shared by the cell types (one test per
gene, ``cell_type == "all"``). The arms are the scenario's own (balanced, or a quarter treated
for ``unbalanced_arms``), not a random split. R methods run where R and their packages are
installed and are skipped with a note otherwise; ``glmmtmb`` and ``lmertest`` test
``r_gene_subset`` genes drawn from the task's seed.

Outputs: ``scenario_null_pvalues.csv.gz`` (one row per scenario, setting, replicate, method,
cell type and gene: p-value, log fold change and its scale, status, seconds),
``scenario_null_type1.csv``: per scenario, S, m, method and cell type (and over the cell types,
``cell_type == "all"``; pooled within a setting, never across settings), the type-I error at
0.05, 0.01 and 0.001 with Wilson 95% intervals and the tail counts at 10⁻³ and 10⁻⁴ against
their Poisson 99% interval (:func:`validation.mock_null.type1_table`), and
``scenario_null_notes.csv`` (per task, what was skipped or warned).

A stage of ``python -m validation``; alone: ``python -m validation.scenario_null --variant quick
--out validation/results --workers 2``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from validation.config import check_config, load_config
from validation.mock_null import type1_table
from validation.parallel import map_replicates, replicate_seeds
from validation.provenance import write_table
from validation.scenario_methods import METHODS, default_methods, r_unavailable, test_data
from validation.scenarios import (
    CELLS_RANGE,
    CONTROL,
    DONOR_RANGE,
    SCENARIOS,
    TREATED,
    simulate_scenario,
)

NAME = "scenario_null"
SOURCES = ("scenario_methods", "methods", "mock_null", "scenarios", "metrics", "parallel",
           "provenance", "r_de", "r_tools", "measure")  # fmt: skip
#: other files the results depend on (part of the pipeline's stamp): the R scripts of r_de
DATA = ("validation/R/pseudobulk_de.R", "validation/R/cell_mixed_models.R",
        "validation/R/check_packages.R")  # fmt: skip
KEYS = ["scenario", "n_donors", "cells_per_donor"]


def environment(config: dict) -> dict:
    """Which of the configured R methods cannot run here, and why (part of the pipeline's
    stamp: installing R or a package reruns the experiment)."""
    return r_unavailable(list(config.get("methods", METHODS)))


def settings(config: dict) -> list[tuple[str, int, int]]:
    """The grid (scenario, S, m) of ``config``, in the order the tasks run."""
    return list(
        itertools.product(
            [str(s) for s in config["scenarios"]],
            [int(s) for s in config["n_donors"]],
            [int(m) for m in config["cells_per_donor"]],
        )
    )


def _task(task: dict) -> tuple[pd.DataFrame, list[str]]:
    data = simulate_scenario(task["scenario"], n_donors=task["n_donors"],
                             cells_per_donor=task["cells_per_donor"], n_genes=task["n_genes"],
                             seed=task["seed"], null=True)  # fmt: skip
    res, notes = test_data(
        data.to_anndata(), donor="donor_id", cell_type="cell_type", condition="condition",
        levels=(CONTROL, TREATED), layer="counts", question=data.scenario.contrast,
        methods=task["methods"], min_cells=task["min_cells"],
        r_gene_subset=task["r_gene_subset"], seed=task["seed"],
    )  # fmt: skip
    keys = {k: task[k] for k in KEYS} | {"replicate": task["replicate"]}
    return res.assign(**keys)[[*keys, *res.columns]], notes


def check(config: dict) -> None:
    """ValueError naming the key of a bad ``config``."""
    check_config(config, NAME, ("scenarios", "n_donors", "cells_per_donor", "n_genes",
                                "replicates"), {
        "scenarios": (lambda v: v in SCENARIOS, f"names in {sorted(SCENARIOS)}"),
        "n_donors": (lambda v: DONOR_RANGE[0] <= int(v) <= DONOR_RANGE[1], "integers in 4–40"),
        "cells_per_donor": (lambda v: CELLS_RANGE[0] <= int(v) <= CELLS_RANGE[1],
                            "integers in 20–2,000"),
        "n_genes": (lambda v: int(v) >= 1, "an integer >= 1"),
        "replicates": (lambda v: int(v) >= 1, "an integer >= 1"),
        "methods": (lambda v: v in METHODS, f"names in {list(METHODS)}"),
        "min_cells": (lambda v: int(v) >= 1, "an integer >= 1"),
        "r_gene_subset": (lambda v: int(v) >= 1, "an integer >= 1"),
    })  # fmt: skip


def run(config: dict, *, results_dir: Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """Run the experiment of ``config`` (checked first); write the three tables to
    ``results_dir`` and return their paths (type-I, p-values, notes)."""
    check(config)
    grid = settings(config)
    reps = int(config["replicates"])
    seeds = replicate_seeds(int(config["seed"]), len(grid) * reps)
    methods = tuple(config["methods"]) if "methods" in config else default_methods()
    tasks = [
        {"scenario": sc, "n_donors": s, "cells_per_donor": m, "replicate": r,
         "n_genes": int(config["n_genes"]), "methods": methods,
         "min_cells": int(config.get("min_cells", 10)),
         "r_gene_subset": int(config.get("r_gene_subset", 50)),
         "seed": int(seeds[i * reps + r].generate_state(1)[0])}
        for i, (sc, s, m) in enumerate(grid)
        for r in range(reps)
    ]  # fmt: skip
    results = map_replicates(_task, tasks, workers=workers, progress=progress, desc=NAME)
    pvalues = pd.concat([res for res, _ in results], ignore_index=True)
    notes = pd.DataFrame(
        [{**{k: t[k] for k in KEYS}, "replicate": t["replicate"], "note": n}
         for t, (_, why) in zip(tasks, results, strict=True) for n in why],
        columns=[*KEYS, "replicate", "note"],
    )  # fmt: skip
    parts = []
    for key, g in pvalues.groupby(KEYS, sort=False):
        parts.append(type1_table(g).assign(**dict(zip(KEYS, key, strict=True))))
    type1 = pd.concat(parts, ignore_index=True)
    type1 = type1[KEYS + [c for c in type1.columns if c not in KEYS]]
    results_dir = Path(results_dir)
    seed = int(config["seed"])
    return [
        write_table(type1, results_dir / f"{NAME}_type1.csv", seed=seed),
        write_table(pvalues, results_dir / f"{NAME}_pvalues.csv.gz", seed=seed),
        write_table(notes, results_dir / f"{NAME}_notes.csv", seed=seed),
    ]


def command_line(name: str, doc: str, run_fn, argv=None) -> int:
    """``python -m validation.<name> [--variant] [--out] [--workers]``: one scenario stage run
    alone (shared by the scenario stages)."""
    p = argparse.ArgumentParser(prog=f"python -m validation.{name}",
                                description=doc.splitlines()[0])  # fmt: skip
    p.add_argument("--variant", choices=("tiny", "quick", "full"), default="quick")
    p.add_argument("--out", default="validation/results")
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    run_fn(load_config(name, a.variant), results_dir=Path(a.out), workers=a.workers)
    return 0


def main(argv=None) -> int:
    return command_line(NAME, __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
