"""``python -m validation``: the validation suite, experiments → figures → paper tables → report.

Runs the experiments of ``validation/`` (agreement, calibration, power, runtime), draws
``figures/fig_*.py`` from their tables, writes ``paper/tables/*.tex`` and regenerates
``validation/REPORT.md``. Stages whose inputs have not changed are skipped (``--force``
reruns them). A repository tool: run it from the root of a source checkout, with pyflashmm
installed (``make reproduce`` does both).

examples:
  python -m validation --quick                 # the quick variant (make reproduce), < 15 min
  python -m validation --full --workers 8      # the paper's variant, hours
  python -m validation --only calibration      # one experiment, then figures and report
  python -m validation --tiny --out /tmp/v     # the test suite's variant, into a scratch folder
  python -m validation --report-only --out validation/full   # redraw from the results there
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROG = "python -m validation"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="variant", action="store_const", const="quick",
                      help="the quick variant (default; minutes)")  # fmt: skip
    size.add_argument("--full", dest="variant", action="store_const", const="full",
                      help="the full variant of the paper (hours)")  # fmt: skip
    size.add_argument("--tiny", dest="variant", action="store_const", const="tiny",
                      help="the test suite's variant (seconds; checks the pipeline; "
                      "needs --out)")  # fmt: skip
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this experiment (repeatable): agreement, calibration, power, "
                   "runtime")  # fmt: skip
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes for replicates (default: all cores)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    p.add_argument("--report-only", action="store_true",
                   help="run no experiment: redraw the figures, LaTeX tables and report (and "
                   "the README's tables) from the results present")  # fmt: skip
    p.add_argument("--out", metavar="DIR",
                   help="write results, figures, tables and REPORT.md under DIR instead of "
                   "the repository's folders")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(variant="quick")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the pipeline for parsed arguments; progress goes to stderr, the summary to stdout."""
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.variant == "tiny" and not args.out:
        raise ValueError(
            "--tiny needs --out DIR: the tiny variant only checks the pipeline and must not "
            "overwrite the committed results, figures and report"
        )
    from validation.pipeline import OutputPaths, run_pipeline

    paths = OutputPaths.under(Path(args.out)) if args.out else OutputPaths.default()
    start = time.perf_counter()
    out = run_pipeline(args.variant, only=args.only, paths=paths, workers=args.workers,
                       force=args.force, quiet=args.quiet,
                       experiments=not args.report_only)  # fmt: skip
    print(
        f"{len(out['tables'])} tables, {len(out['figures'])} figure files drawn, "
        f"{len(out['tex'])} LaTeX tables, report {out['report']} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: usage errors exit 2 (argparse); errors a user can fix are one line on
    stderr and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
