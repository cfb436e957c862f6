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

Costly methods can be limited by ``method_limits`` (``{method = {replicates = k,
max_cells_per_donor = m, scenarios = [...]}}``: run on the first k replicates of a setting, only
where the cells per donor are at most m, or only in the scenarios named); every method left out
of a task is a note. The optional
``[tail]`` table (``n_donors``, ``cells_per_donor``, ``n_genes``, ``replicates``, ``methods``)
adds, for every scenario, replicates of one setting with many genes for the methods cheap
enough to give the ~10⁵ null tests a QQ plot needs to reach −log10 p ≈ 5; they are numbered
after the grid's replicates of that setting (``tail`` in the notes) and pooled with them.

Outputs: ``scenario_null_pvalues.csv.gz`` (one row per scenario, setting, replicate, method,
cell type and gene: p-value, log fold change and its scale, status, seconds),
``scenario_null_type1.csv``: per scenario, S, m, method and cell type (and over the cell types,
``cell_type == "all"``; pooled within a setting, never across settings), the type-I error at
0.05, 0.01 and 0.001 with Wilson 95% intervals and the tail counts at 10⁻³ and 10⁻⁴ against
their Poisson 99% interval (:func:`validation.mock_null.type1_table`), and
``scenario_null_replicates.csv`` (the type-I error of each replicate, one data set, per method
and cell type; the type-I table's ``rep_lo_<α>``/``rep_hi_<α>`` are the Student-t 95% interval
over these, which unlike the Wilson interval of the pooled tests includes the correlation of the
tests of one data set), ``scenario_null_qq.csv.gz`` (per scenario, setting and method: the
thinned QQ coordinates of :func:`qq_table`, which the QQ figures draw; the p-value table can be
too large to keep) and
``scenario_null_notes.csv`` (per task, what was skipped or warned).

A stage of ``python -m validation``; alone: ``python -m validation.scenario_null --variant quick
--out validation/results --workers 2``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from validation.config import check_config, load_config
from validation.mock_null import type1_table
from validation.parallel import map_replicates, replicate_seeds
from validation.provenance import write_table
from validation.scenario_methods import (
    COLUMNS,
    METHODS,
    default_methods,
    r_unavailable,
    test_data,
)
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
#: the levels of the per-replicate table, and those with replicate intervals in the type-I table
REPLICATE_ALPHAS = (0.05, 0.01, 0.001)
ALPHAS = (0.05, 0.01)
#: what ``method_limits`` may bound
LIMITS = ("replicates", "max_cells_per_donor")


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


def limited_methods(
    methods, limits: dict, *, scenario: str, cells_per_donor: int, replicate: int
) -> tuple[tuple[str, ...], list[str]]:
    """The ``methods`` a task runs under ``limits`` (``{method: {"replicates": k,
    "max_cells_per_donor": m, "scenarios": [names]}}``) and a note for each method left out."""
    keep, notes = [], []
    for meth in methods:
        lim = limits.get(meth, {})
        if replicate >= int(lim.get("replicates", replicate + 1)):
            notes.append(f"{meth}: not run (method_limits: first {lim['replicates']} "
                         "replicates of a setting)")  # fmt: skip
        elif cells_per_donor > int(lim.get("max_cells_per_donor", cells_per_donor)):
            notes.append(f"{meth}: not run (method_limits: at most "
                         f"{lim['max_cells_per_donor']} cells per donor)")  # fmt: skip
        elif scenario not in lim.get("scenarios", [scenario]):
            notes.append(f"{meth}: not run (method_limits: scenarios {lim['scenarios']})")
        else:
            keep.append(meth)
    return tuple(keep), notes


def check_limits(limits, methods, where: str) -> None:
    """ValueError naming ``method_limits`` when ``limits`` is not {method: {limit: value}}
    (``replicates`` and ``max_cells_per_donor`` integers >= 1, ``scenarios`` scenario names)."""
    if not isinstance(limits, dict):
        raise ValueError(f"{where}: method_limits must be a table of methods; got {limits!r}")

    def ok(key, value):
        if key == "scenarios":
            return isinstance(value, list) and bool(value) and all(v in SCENARIOS for v in value)
        return key in LIMITS and isinstance(value, int) and value >= 1

    for meth, lim in limits.items():
        if (
            meth not in methods
            or not isinstance(lim, dict)
            or not lim
            or not all(ok(k, v) for k, v in lim.items())
        ):
            raise ValueError(f"{where}: method_limits.{meth} must name a method of "
                             f"{list(methods)} and bound {list(LIMITS)} by integers >= 1 or "
                             f"name the scenarios it runs in; got {lim!r}")  # fmt: skip


def qq_table(pvalues: pd.DataFrame, *, tail: int = 100, bulk: int = 100) -> pd.DataFrame:
    r"""Thinned QQ coordinates per scenario, setting and method.

    For the n finite null p-values of a group sorted, p₍₁₎ ≤ … ≤ p₍ₙ₎, one row per kept order
    statistic j (the ``tail`` smallest and ``bulk`` log-spaced ranks): ``expected`` =
    −log10((j − ½)/n), ``observed`` = −log10 p₍ⱼ₎ and the pointwise 95% band of the j-th
    uniform order statistic, Beta(j, n − j + 1) (``band_low``, ``band_high``, on the −log10
    scale), by :func:`figures.fig_calibration_qq.qq_points`; ``n_tests`` = n.
    """
    from figures.fig_calibration_qq import qq_points

    cols = [*KEYS, "method", "n_tests", "expected", "observed", "band_low", "band_high"]
    parts = []
    for key, g in pvalues.groupby([*KEYS, "method"], sort=True, observed=True):
        p = g["p_value"].to_numpy(np.float64)
        n = int(np.isfinite(p).sum())
        if n == 0:
            continue
        ex, ob, lo, hi = qq_points(p, tail=tail, bulk=bulk)
        parts.append(pd.DataFrame({**dict(zip([*KEYS, "method"], key, strict=True)),
                                   "n_tests": n, "expected": ex, "observed": ob,
                                   "band_low": lo, "band_high": hi}))  # fmt: skip
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def per_setting(pvalues: pd.DataFrame, keys=KEYS) -> pd.DataFrame:
    """:func:`validation.mock_null.type1_table` of each group of ``keys`` (a setting: its
    replicates pooled), the keys first."""
    parts = [type1_table(g).assign(**dict(zip(keys, key, strict=True)))
             for key, g in pvalues.groupby(list(keys), sort=False)]  # fmt: skip
    out = pd.concat(parts, ignore_index=True)
    return out[list(keys) + [c for c in out.columns if c not in keys]]


def replicate_rates(pvalues: pd.DataFrame) -> pd.DataFrame:
    """Per setting, replicate, method and cell type (``"all"``: the replicate's cell types
    pooled): the tests and the type-I error at 0.05, 0.01 and 0.001 of that one data set."""
    cols = [*KEYS, "replicate", "method", "cell_type", "n_tests"]
    out = per_setting(pvalues, [*KEYS, "replicate"])
    return out[cols + [f"type1_{a:g}" for a in REPLICATE_ALPHAS]]


def with_replicate_intervals(type1: pd.DataFrame, per_replicate: pd.DataFrame) -> pd.DataFrame:
    r"""``type1`` with, per row, ``n_replicates`` and the Student-t 95% interval over the
    replicates of the type-I error at 0.05 and 0.01 (``rep_lo_<α>``, ``rep_hi_<α>``; NaN with
    one replicate).

    The replicates are independent data sets (each its own design, donors and genes), so this
    interval includes what the Wilson interval of the pooled tests leaves out: the tests of one
    data set share its design and, for the cell types of a gene, its donor effects.
    """
    from validation.metrics import replicate_interval

    rows = []
    for key, g in per_replicate.groupby([*KEYS, "method", "cell_type"], sort=False):
        row = dict(zip([*KEYS, "method", "cell_type"], key, strict=True))
        row["n_replicates"] = int(g["replicate"].nunique())
        for a in ALPHAS:
            ci = replicate_interval(g[f"type1_{a:g}"])
            row.update({f"rep_lo_{a:g}": ci["lo"], f"rep_hi_{a:g}": ci["hi"]})
        rows.append(row)
    return type1.merge(pd.DataFrame(rows), on=[*KEYS, "method", "cell_type"], how="left")


def _task(task: dict) -> tuple[pd.DataFrame, list[str]]:
    methods, skipped = limited_methods(task["methods"], task["method_limits"],
                                       scenario=task["scenario"],
                                       cells_per_donor=task["cells_per_donor"],
                                       replicate=task["replicate"])  # fmt: skip
    keys = {k: task[k] for k in KEYS} | {"replicate": task["replicate"]}
    if not methods:  # every method limited out of this task
        return pd.DataFrame(columns=[*keys, *COLUMNS]), skipped
    data = simulate_scenario(task["scenario"], n_donors=task["n_donors"],
                             cells_per_donor=task["cells_per_donor"], n_genes=task["n_genes"],
                             seed=task["seed"], null=True)  # fmt: skip
    res, notes = test_data(
        data.to_anndata(), donor="donor_id", cell_type="cell_type", condition="condition",
        levels=(CONTROL, TREATED), layer="counts", question=data.scenario.contrast,
        methods=methods, min_cells=task["min_cells"],
        r_gene_subset=task["r_gene_subset"], seed=task["seed"],
    )  # fmt: skip
    tail = [f"tail: {task['n_genes']} genes, methods {list(methods)}"] if task["tail"] else []
    return res.assign(**keys)[[*keys, *res.columns]], tail + skipped + list(notes)


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
    where = f"configs/{NAME}.toml [{config.get('variant', '?')}]"
    check_limits(config.get("method_limits", {}), METHODS, where)
    tail = config.get("tail")
    if tail is not None:
        need = ("n_donors", "cells_per_donor", "n_genes", "replicates", "methods")
        if not isinstance(tail, dict) or any(k not in tail for k in need):
            raise ValueError(f"{where}: tail must be a table with {list(need)}; got {tail!r}")
        check_config({**tail, "variant": config.get("variant")}, NAME, need, {
            "n_donors": (lambda v: DONOR_RANGE[0] <= int(v) <= DONOR_RANGE[1],
                         "an integer in 4–40"),
            "cells_per_donor": (lambda v: CELLS_RANGE[0] <= int(v) <= CELLS_RANGE[1],
                                "an integer in 20–2,000"),
            "n_genes": (lambda v: int(v) >= 1, "an integer >= 1"),
            "replicates": (lambda v: int(v) >= 1, "an integer >= 1"),
            "methods": (lambda v: v in METHODS, f"names in {list(METHODS)}"),
        })  # fmt: skip
        # the tail adds replicates to a setting of the grid, for methods the grid runs there
        if (int(tail["n_donors"]), int(tail["cells_per_donor"])) not in {
            (int(s), int(m)) for s in config["n_donors"] for m in config["cells_per_donor"]
        }:
            raise ValueError(f"{where}: tail's n_donors × cells_per_donor must be a setting of "
                             "the grid")  # fmt: skip
        grid_methods = config.get("methods", list(METHODS))
        limits = config.get("method_limits", {})
        bad = [m for m in tail["methods"]
               if m not in grid_methods or "replicates" in limits.get(m, {})]  # fmt: skip
        if bad:
            raise ValueError(f"{where}: tail methods {bad} must be among methods and not "
                             "bounded by method_limits' replicates (the tail's replicates come "
                             "after the grid's)")  # fmt: skip


def _tail_settings(config: dict, reps: int) -> list[tuple[str, int, int, int, int]]:
    """(scenario, S, m, replicate, n_genes) of the ``tail`` tasks: for every scenario, the
    tail's replicates of its one setting, numbered after the grid's ``reps`` replicates."""
    tail = config.get("tail")
    if tail is None:
        return []
    s, m, g = int(tail["n_donors"]), int(tail["cells_per_donor"]), int(tail["n_genes"])
    return [(sc, s, m, reps + r, g) for sc in config["scenarios"]
            for r in range(int(tail["replicates"]))]  # fmt: skip


def run(config: dict, *, results_dir: Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """Run the experiment of ``config`` (checked first); write the five tables to
    ``results_dir`` and return their paths (type-I, per replicate, p-values, QQ, notes)."""
    check(config)
    grid = settings(config)
    reps = int(config["replicates"])
    tails = _tail_settings(config, reps)
    # the tail's seeds follow the grid's: adding a tail leaves the grid's data unchanged
    seeds = replicate_seeds(int(config["seed"]), len(grid) * reps + len(tails))
    methods = tuple(config["methods"]) if "methods" in config else default_methods()
    common = {"min_cells": int(config.get("min_cells", 10)),
              "r_gene_subset": int(config.get("r_gene_subset", 50)),
              "method_limits": dict(config.get("method_limits", {}))}  # fmt: skip
    tasks = [
        {"scenario": sc, "n_donors": s, "cells_per_donor": m, "replicate": r,
         "n_genes": int(config["n_genes"]), "methods": methods, "tail": False, **common,
         "seed": int(seeds[i * reps + r].generate_state(1)[0])}
        for i, (sc, s, m) in enumerate(grid)
        for r in range(reps)
    ]  # fmt: skip
    tasks += [
        {"scenario": sc, "n_donors": s, "cells_per_donor": m, "replicate": r, "n_genes": g,
         "methods": tuple(config["tail"]["methods"]), "tail": True, **common,
         "seed": int(seeds[len(grid) * reps + i].generate_state(1)[0])}
        for i, (sc, s, m, r, g) in enumerate(tails)
    ]  # fmt: skip
    results = map_replicates(_task, tasks, workers=workers, progress=progress, desc=NAME)
    pvalues = pd.concat([res for res, _ in results], ignore_index=True)
    notes = pd.DataFrame(
        [{**{k: t[k] for k in KEYS}, "replicate": t["replicate"], "note": n}
         for t, (_, why) in zip(tasks, results, strict=True) for n in why],
        columns=[*KEYS, "replicate", "note"],
    )  # fmt: skip
    per_replicate = replicate_rates(pvalues)
    type1 = with_replicate_intervals(per_setting(pvalues), per_replicate)
    results_dir = Path(results_dir)
    seed = int(config["seed"])
    return [
        write_table(type1, results_dir / f"{NAME}_type1.csv", seed=seed),
        write_table(per_replicate, results_dir / f"{NAME}_replicates.csv", seed=seed),
        write_table(pvalues, results_dir / f"{NAME}_pvalues.csv.gz", seed=seed),
        write_table(qq_table(pvalues), results_dir / f"{NAME}_qq.csv.gz", seed=seed),
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
