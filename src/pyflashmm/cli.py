"""Command line: ``pyflashmm <command> ...`` (argparse).

Each command lives in its own module and contributes two functions: ``add_parser(subparsers)``
registers its arguments, and the parser's ``func`` default runs it and returns an exit code.
Errors a user can fix (a missing file, an unknown column) are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: modules that define ``add_parser(subparsers)``, in the order ``--help`` lists them
COMMAND_MODULES = ("pyflashmm._cli_de", "pyflashmm._cli_simulate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyflashmm",
        description="Fast LMMs from summary statistics and NB GLMs for single-cell DE.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"pyflashmm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
