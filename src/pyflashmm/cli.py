"""Command line: ``pyflashmm de ...`` and ``pyflashmm simulate ...`` (argparse).

Errors a user can fix (a missing file, an unknown column, a bad option) are one line on stderr
naming the option, and exit code 2; long work shows progress on stderr unless ``--quiet``.
The validation suite is a repository tool, not part of the package: ``python -m validation``
(``make reproduce``) in a source checkout.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

#: lmmtest's df methods, spelled out here so that ``--help`` needs no Numba import (a test
#: checks that they are the same)
LMM_DF_METHODS = (
    "auto",
    "satterthwaite",
    "satterthwaite-expected",
    "kenward-roger",
    "residual",
    "between",
)
#: the NB mixed model's Wald reference distributions (checked against pyflashmm.nbmm_test's by
#: the same test)
NBMM_DF_METHODS = ("auto", "between", "z")

DE_EPILOG = """\
examples:
  # LMM on log2(1 + counts) with a donor random intercept; condition within each cell type
  pyflashmm de pbmc.h5ad --layer counts \\
      --fixed "~ 0 + log(n_counts) + cell_type + cell_type:condition" --random "(1|donor_id)" \\
      --contrast "stim_in_B=cell_typeB cell:conditionstim" -o lmm.csv

  # pseudobulk NB GLM (DESeq2) per cell type, donors as samples
  pyflashmm de pbmc.h5ad --layer counts --method pseudobulk --random donor_id \\
      --cell-type cell_type --fixed "~ condition" --contrast "stim=conditionstim" -o pb.csv

  # NB mixed model: counts with size-factor offsets and a donor random intercept
  pyflashmm de pbmc.h5ad --layer counts --method nbmm --random donor_id \\
      --fixed "~ condition" --contrast "stim=conditionstim" -o nbmm.csv

  The table has one row per (gene, contrast[, cell type]): variable, contrast, [cell_type],
  log_fc, se, stat, df, p_value, adj_p_value (BH per contrast and cell type), method, ...
  log_fc is a log2 fold change for the NB methods and a difference of mean log2(1 + count)
  for the LMM. A one-line summary goes to stderr.
"""


class _UsageError(ValueError):
    """A command-line option that cannot be used (reported as ``error: ...``, exit code 2)."""


def _existing_file(path: str, option: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise _UsageError(f"{option}: no such file: {p}")
    return p


def _output_path(path: str, option: str = "-o/--output") -> Path:
    out = Path(path)
    if not out.resolve().parent.is_dir():
        raise _UsageError(f"{option}: the folder {out.resolve().parent} does not exist")
    if out.is_dir():
        raise _UsageError(f"{option}: {out} is a folder; give a file name")
    return out


# ----------------------------------------------------------------------------- pyflashmm de


def _add_de(subparsers) -> None:
    p = subparsers.add_parser(
        "de",
        help="differential expression of an .h5ad file (LMM, NB mixed model, pseudobulk or "
        "cell-level NB GLM)",
        description="Fit per-gene models to the counts of an .h5ad file and test contrasts.",
        epilog=DE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", help="AnnData .h5ad file or .zarr store (read from disk in cell chunks)"
    )
    p.add_argument("--fixed", required=True, help='fixed-effects formula, e.g. "~ condition"')
    p.add_argument(
        "--random", action="append", default=None, metavar="TERM",
        help='donor grouping: a column or lme4 terms, e.g. "(1|donor_id)" (repeatable)',
    )  # fmt: skip
    p.add_argument(
        "--contrast", action="append", default=None, metavar="NAME=EXPR",
        help='contrast to test, e.g. "stim=conditionstim" (repeatable; default: every '
        "coefficient)",
    )  # fmt: skip
    p.add_argument("--method", default="lmm", choices=["lmm", "nbmm", "pseudobulk", "nbglm"])
    p.add_argument("--layer", default=None, help="layer holding the raw counts (default: X)")
    p.add_argument(
        "--cell-type", default=None, metavar="COLUMN",
        help="pseudobulk: fit one model per cell type of this column",
    )  # fmt: skip
    p.add_argument(
        "--pooled", action="store_true",
        help="pseudobulk with --cell-type: one pooled model over cell types (pseudoreplication)",
    )  # fmt: skip
    p.add_argument("--transform", default="log2p1", choices=["log2p1", "log1p", "none"],
                   help="LMM: transform of the counts (default log2p1)")  # fmt: skip
    p.add_argument("--df", default="auto",
                   choices=list(dict.fromkeys(LMM_DF_METHODS + NBMM_DF_METHODS)),
                   help="LMM: denominator degrees of freedom (auto: Kenward-Roger with REML, "
                   "Satterthwaite with ML); nbmm: between (auto, Wald t on the donor-level df) "
                   "or z")  # fmt: skip
    p.add_argument("--moderate", action="store_true",
                   help="LMM: empirical-Bayes moderated tests")  # fmt: skip
    p.add_argument("--robust", action="store_true",
                   help="LMM with --moderate: a prior robust to outlying genes")  # fmt: skip
    p.add_argument("--no-trend", dest="trend", action="store_false", default=None,
                   help="LMM with --moderate: a constant prior (default: its variance trends "
                        "with each gene's mean expression, limma-trend)")  # fmt: skip
    fitting = p.add_mutually_exclusive_group()
    fitting.add_argument(
        "--ml",
        action="store_true",
        help="LMM and nbmm: fit by ML (nbmm's default with --test lrt or --agq)",
    )
    fitting.add_argument("--reml", action="store_true",
                         help="LMM and nbmm: fit by REML (the default; nbmm uses ML with --test "
                              "lrt or --agq)")  # fmt: skip
    p.add_argument(
        "--test", default=None, choices=["wald", "lrt"],
        help="NB methods: the test (default: lrt for nbglm, wald for pseudobulk and nbmm)",
    )  # fmt: skip
    p.add_argument("--agq", type=int, default=None, metavar="N",
                   help="nbmm: adaptive Gauss-Hermite quadrature with N >= 2 nodes (default: "
                   "Laplace, as glmmTMB)")  # fmt: skip
    # de()'s default (pyflashmm._lmm.stats.DEFAULT_CHUNK_SIZE), not imported: --help needs no Numba
    p.add_argument("--chunk-size", type=int, default=8_192, help="cells read at a time")
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="run the work on the counts on this Dask scheduler's workers "
                   "(e.g. tcp://host:8786): the summary statistics / pseudobulk sums over "
                   "cell chunks, the nbmm / nbglm fits over gene blocks; bitwise the same "
                   "results")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="result CSV file")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=_run_de)


def _parse_contrasts(items):
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        name, sep, expr = item.partition("=")
        name, expr = name.strip(), expr.strip()
        if not sep or not name or not expr:
            raise _UsageError(f"--contrast must look like NAME=EXPR; got {item!r}")
        if name in out:
            raise _UsageError(f"--contrast: the name {name!r} is given twice")
        out[name] = expr
    return out


def summary_line(table, output) -> str:
    """One line: rows, genes, contrasts (cell types) and the calls at FDR 0.05 (the intercept,
    which every expressed gene "passes", not counted)."""
    n_genes = table["variable"].nunique()
    n_contrasts = table["contrast"].nunique()
    parts = f"{n_genes} genes × {n_contrasts} contrast{'s' if n_contrasts != 1 else ''}"
    if "cell_type" in table.columns:
        parts += f" × {table['cell_type'].nunique()} cell types"
    tests = table[table["contrast"] != "(Intercept)"]
    called = tests["adj_p_value"] < 0.05
    scope = " (intercept not counted)" if len(tests) < len(table) else ""
    return (
        f"pyflashmm de: {len(table)} rows ({parts}); {int(called.sum())} at FDR 0.05 "
        f"({tests.loc[called, 'variable'].nunique()} genes){scope} -> {output}"
    )


def _run_de(args) -> int:
    path = _existing_file(args.input, "input")
    if path.suffix.lower() not in (".h5ad", ".zarr"):
        raise _UsageError(f"input: {str(path)!r} is not an .h5ad file or a .zarr store")
    out = _output_path(args.output)
    contrasts = _parse_contrasts(args.contrast)
    if args.chunk_size <= 0:
        raise _UsageError(f"--chunk-size must be a positive integer; got {args.chunk_size}")
    if args.pooled and args.cell_type is None:
        raise _UsageError("--pooled needs --cell-type")
    if args.agq is not None and (args.method != "nbmm" or args.agq < 2):
        raise _UsageError("--agq N needs --method nbmm and N >= 2")
    from pyflashmm._frontend.de import de

    random = args.random if args.random is None or len(args.random) > 1 else args.random[0]
    table = de(
        path,
        fixed=args.fixed,
        random=random,
        contrast=contrasts,
        method=args.method,
        layer=args.layer,
        cell_type=args.cell_type,
        per_cell_type=not args.pooled,
        transform=None if args.transform == "none" else args.transform,
        reml=False if args.ml else True if args.reml else None,
        df=args.df,
        moderate=args.moderate,
        robust=args.robust,
        trend=args.trend,
        test=args.test,
        chunk_size=args.chunk_size,
        progress=False if args.quiet else None,
        scheduler=False if args.dask_scheduler is None else args.dask_scheduler,
        **({} if args.agq is None else {"n_agq": args.agq}),
    )
    table.to_csv(out, index=False)
    prior = _write_moderation_prior(table, out)
    if not args.quiet:
        print(summary_line(table, out), file=sys.stderr)
        if prior is not None:
            print(f"pyflashmm de: the moderation prior (d0, s0²) per contrast -> {prior}",
                  file=sys.stderr)  # fmt: skip
    return 0


def _write_moderation_prior(table, out: Path):
    """With --moderate, the prior of each contrast (``table.attrs["moderation"]``) goes to a
    companion CSV beside the result, ``<name>.moderation.csv``: the CSV keeps no attrs."""
    if "moderation" not in table.attrs:
        return None
    import pandas as pd

    path = out.with_name(out.stem + ".moderation.csv")
    pd.DataFrame(table.attrs["moderation"]).to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- pyflashmm simulate


def _add_simulate(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate multi-subject scRNA-seq counts (FLASHMM's simuRNAseq model)",
        description=(
            "Simulate NB counts with subject random effects and cluster-specific DE genes "
            "and write them (cells x genes, sparse) with the truth to an .h5ad file or a .zarr "
            "store, a few thousand cells at a time (memory does not grow with the matrix). "
            "The cell table has the simulator's columns sam (subject), cls (cluster), trt "
            "(arm), libsize."
        ),
    )
    p.add_argument(
        "-o", "--output", required=True, help="output .h5ad or .zarr path (replaced if it exists)"
    )
    p.add_argument(
        "--reference",
        help="reference .h5ad (cells x genes counts; obs may hold sam/cls/trt); "
        "default: FLASHMM's synthetic reference",
    )
    p.add_argument("--n-genes", type=int, default=None, help="genes (required w/o reference)")
    p.add_argument("--n-cells", type=int, default=None, help="cells (required w/o reference)")
    p.add_argument("--n-samples", type=int, default=25, help="subjects (default 25)")
    p.add_argument("--n-clusters", type=int, default=10, help="cell types (default 10)")
    p.add_argument("--n-treatments", type=int, default=2, help="conditions (default 2)")
    p.add_argument("--treatment", default=None, help="treated condition (default: last)")
    p.add_argument("--n-de-genes", type=int, default=None, help="DE genes (default n-clusters)")
    p.add_argument("--direction", choices=("both", "up", "down"), default="both")
    p.add_argument("--min-beta", type=float, default=0.25, help="min |logFC| (natural log)")
    p.add_argument("--max-beta", type=float, default=1.0, help="max |logFC| (natural log)")
    p.add_argument("--var-random-effects", type=float, default=0.1, help="subject variance")
    p.add_argument(
        "--var-subject-cluster", type=float, default=0.0, help="subject x cluster variance"
    )
    p.add_argument("--not-nested", action="store_true", help="subjects are seen in every condition")
    p.add_argument(
        "--no-adjust-library-size", action="store_true", help="same library size for all cells"
    )
    p.add_argument("--null", action="store_true", help="no DE genes (calibration data)")
    p.add_argument("--seed", type=int, default=None, help="random seed (a non-negative integer)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=_run_simulate)


#: simulate_rnaseq's parameters as the options that set them, for its error messages
_SIMULATE_OPTIONS = {
    "n_genes": "--n-genes", "n_cells": "--n-cells", "n_samples": "--n-samples",
    "n_clusters": "--n-clusters", "n_treatments": "--n-treatments", "treatment": "--treatment",
    "n_de_genes": "--n-de-genes", "direction": "--direction", "min_beta": "--min-beta",
    "max_beta": "--max-beta", "var_random_effects": "--var-random-effects",
    "var_subject_cluster": "--var-subject-cluster", "counts": "--reference",
    "metadata": "--reference obs",
}  # fmt: skip


def _as_options(message: str) -> str:
    """A simulate_rnaseq message with its parameter names spelled as the CLI options."""
    for name, option in sorted(_SIMULATE_OPTIONS.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"\b{name}\b", option, message)
    return message


def _simulate(counts, args, out=None):
    from pyflashmm._simulate import simulate_rnaseq

    return simulate_rnaseq(
        counts,
        out=out,
        overwrite=out is not None,
        n_genes=args.n_genes,
        n_cells=args.n_cells,
        samples_nested=not args.not_nested,
        n_samples=args.n_samples,
        n_clusters=args.n_clusters,
        n_treatments=args.n_treatments,
        treatment=args.treatment,
        n_de_genes=args.n_de_genes,
        adjust_library_size=not args.no_adjust_library_size,
        direction=args.direction,
        min_beta=args.min_beta,
        max_beta=args.max_beta,
        var_random_effects=args.var_random_effects,
        var_subject_cluster=args.var_subject_cluster,
        null=args.null,
        rng=args.seed,
    )


def _run_simulate(args) -> int:
    out = Path(args.output)
    if out.suffix.lower() == ".zarr" and out.is_dir():
        # a zarr store is a folder: replace one, but never a folder that is not a store
        if not ((out / ".zgroup").is_file() or (out / "zarr.json").is_file()):
            raise _UsageError(f"-o/--output: {out} is a folder but not a zarr store")
    else:
        out = _output_path(args.output)
    if out.suffix.lower() not in (".h5ad", ".zarr"):
        raise _UsageError(
            f"-o/--output: {str(out)!r} must end in .h5ad (an AnnData file) or .zarr (a store)"
        )
    if args.seed is not None and args.seed < 0:
        raise _UsageError(f"--seed must be a non-negative integer; got {args.seed}")
    for option in ("n_genes", "n_cells", "n_samples", "n_clusters", "n_treatments"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise _UsageError(f"--{option.replace('_', '-')} must be positive; got {value}")
    counts = None
    if args.reference is not None:
        ref = _existing_file(args.reference, "--reference")
        if ref.suffix.lower() != ".h5ad":
            raise _UsageError(f"--reference: {str(ref)!r} is not an .h5ad file")
        import anndata

        try:
            counts = anndata.read_h5ad(ref)
        except OSError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _UsageError(f"--reference: cannot read {ref} as .h5ad ({reason})") from None
    elif args.n_genes is None or args.n_cells is None:
        raise _UsageError("--n-genes and --n-cells are required without --reference")
    try:
        # streamed to the store: the counts are never held whole
        sim = _simulate(counts, args, out=out)
    except (ValueError, TypeError) as exc:
        raise _UsageError(_as_options(str(exc))) from None
    if not args.quiet:
        from pyflashmm._simulate_store import stored_nnz

        n, g = len(sim.obs), len(sim.var)
        print(
            f"wrote {out}: {n} cells x {g} genes, {stored_nnz(out)} non-zeros, "
            f"{len(sim.de_genes)} DE genes, treated arm {sim.treatment}",
            file=sys.stderr,
        )
    return 0


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyflashmm",
        description="Fast LMMs from summary statistics and NB GLMs for single-cell DE.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_de(subparsers)
    _add_simulate(subparsers)
    return parser


def _one_line(text) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run ``pyflashmm``; returns the exit code (2 for errors a user can fix).

    Errors and warnings are printed as one line each on stderr, prefixed by the command.
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"pyflashmm {args.command}: {category.__name__}: {_one_line(message)}",
              file=sys.stderr)  # fmt: skip

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            return int(args.func(args) or 0)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"pyflashmm {args.command}: error: {_one_line(message)}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
