"""``pyflashmm simulate``: FLASHMM's NB simulator to an ``.h5ad`` file."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``simulate`` on the ``pyflashmm`` sub-command parsers."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate multi-subject scRNA-seq counts (FLASHMM's simuRNAseq model)",
        description=(
            "Simulate NB counts with subject random effects and cluster-specific DE genes "
            "and write them (cells x genes, sparse) with the truth to an .h5ad file."
        ),
    )
    p.add_argument("-o", "--output", required=True, help="output .h5ad path")
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
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    from pyflashmm._simulate import simulate_rnaseq

    counts = None
    if args.reference is not None:
        import anndata

        counts = anndata.read_h5ad(args.reference)
    elif args.n_genes is None or args.n_cells is None:
        raise ValueError("--n-genes and --n-cells are required without --reference")
    sim = simulate_rnaseq(
        counts,
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
    sim.write_h5ad(args.output)
    if not args.quiet:
        n, g = sim.counts.shape
        print(
            f"wrote {args.output}: {n} cells x {g} genes, {sim.counts.nnz} non-zeros, "
            f"{len(sim.de_genes)} DE genes, treated arm {sim.treatment}",
            file=sys.stderr,
        )
    return 0
