"""``pyflashmm reproduce``: the validation suite, experiments → figures → paper tables → report.

Runs the experiments of ``validation/`` (agreement, calibration, power, runtime), draws
``figures/fig_*.py`` from their tables, writes ``paper/tables/*.tex`` and regenerates
``validation/REPORT.md``. Stages whose inputs have not changed are skipped (``--force``
reruns them). Needs a source checkout (the ``validation/`` and ``figures/`` folders).

``--demo`` instead runs the small end-to-end demo (simulate → summary statistics → LMM →
result table) and prints the strongest results.

examples:
  pyflashmm reproduce --quick                 # the quick variant (make reproduce), < 15 min
  pyflashmm reproduce --full --workers 8      # the paper's variant, hours
  pyflashmm reproduce --only calibration      # one experiment, then figures and report
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run the validation suite: experiments, figures, paper tables, REPORT.md",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="variant", action="store_const", const="quick",
                      help="the quick variant (default; minutes)")  # fmt: skip
    size.add_argument("--full", dest="variant", action="store_const", const="full",
                      help="the full variant of the paper (hours)")  # fmt: skip
    size.add_argument("--tiny", dest="variant", action="store_const", const="tiny",
                      help="the test suite's variant (seconds; checks the pipeline)")  # fmt: skip
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this experiment (repeatable): agreement, calibration, power, "
                   "runtime")  # fmt: skip
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes for replicates (default: all cores)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    p.add_argument("--out", metavar="DIR",
                   help="write results, figures, tables and REPORT.md under DIR instead of "
                   "the repository's folders")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--demo", action="store_true", help="run the small end-to-end demo instead")
    p.add_argument("--genes", type=int, default=200, help="--demo: number of simulated genes")
    p.add_argument("--cells", type=int, default=20_000, help="--demo: number of simulated cells")
    p.add_argument("--seed", type=int, default=2503, help="--demo: seed")
    p.add_argument("-o", "--output", help="--demo: also write the full table to this CSV file")
    p.set_defaults(func=run, variant="quick")


def repo_root() -> Path:
    """The source checkout that holds ``validation/`` (an error for a plain installation)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "validation" / "pipeline.py").exists():
        raise ValueError(
            "reproduce needs a source checkout (validation/ and figures/ next to src/); "
            "clone the repository and install it with `pip install -e .`"
        )
    return root


def run(args) -> int:
    if args.demo:
        return run_demo(args)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.variant == "tiny" and not args.out:
        raise ValueError(
            "--tiny needs --out DIR: the tiny variant only checks the pipeline and must not "
            "overwrite the committed results, figures and report"
        )
    root = repo_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from validation.pipeline import OutputPaths, run_pipeline

    paths = OutputPaths.under(Path(args.out)) if args.out else OutputPaths.default()
    start = time.perf_counter()
    out = run_pipeline(args.variant, only=args.only, paths=paths, workers=args.workers,
                       force=args.force, quiet=args.quiet)  # fmt: skip
    print(
        f"{len(out['tables'])} tables, {len(out['figures'])} figure files drawn, "
        f"{len(out['tex'])} LaTeX tables, report {out['report']} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


def run_demo(args) -> int:
    import pandas as pd

    from pyflashmm.demo import run_demo as demo

    start = time.perf_counter()
    table = demo(n_genes=args.genes, n_cells=args.cells, seed=args.seed)
    elapsed = time.perf_counter() - start
    cols = ["variable", "contrast", "log_fc", "se", "df", "p_value", "adj_p_value", "true_beta"]
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(table[cols].head(15).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    calls = table["adj_p_value"] < 0.05
    true = table["true_beta"] != 0
    print(
        f"\n{len(table)} gene × cluster tests (Satterthwaite df), {int(calls.sum())} at BH 5% "
        f"({int((calls & true).sum())} of {int(true.sum())} simulated DE effects, "
        f"{int((calls & ~true).sum())} false), {elapsed:.1f} s including compilation",
        file=sys.stdout,
    )
    if args.output:
        table.to_csv(args.output, index=False)
    return 0
