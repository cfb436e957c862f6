"""``pyflashmm de``: differential expression of an ``.h5ad`` file to a CSV table."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
example (the FLASHMM vignette's analysis):
  pyflashmm simulate --n-genes 100 --n-cells 20000 --seed 1 -o sim.h5ad
  pyflashmm de sim.h5ad --fixed "~ 0 + log(libsize) + cls + cls:trt" --random sam \\
      --contrast "B_vs_A_in_1=cls1:trtB" --contrast "B_vs_A_avg=(cls1:trtB + cls2:trtB)/2" \\
      -o results.csv

  The table has one row per (gene, contrast): variable, contrast, log_fc (log2(1 + count)
  scale), se, stat, df (Satterthwaite), p_value, adj_p_value (BH per contrast), method.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "de",
        help="differential expression of an .h5ad file (LMM, NB GLM or pseudobulk)",
        description="Fit per-gene models to the counts of an .h5ad file and test contrasts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="AnnData .h5ad file (cells × genes counts in X or --layer)")
    p.add_argument("--fixed", required=True, help='fixed-effects formula, e.g. "~ trt + x"')
    p.add_argument(
        "--random", action="append", default=None,
        help="random-effect grouping column or one-sided formula (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--contrast", action="append", default=None, metavar="NAME=EXPR",
        help='contrast to test, e.g. "BvsA=trtB" (repeatable; default: every coefficient)',
    )  # fmt: skip
    p.add_argument("--method", default="lmm", choices=["lmm", "nbglm", "pseudobulk"])
    p.add_argument("--layer", default=None, help="counts layer (default: X)")
    p.add_argument("--transform", default="log2p1", choices=["log2p1", "log1p", "none"])
    p.add_argument(
        "--df", default="satterthwaite", choices=["satterthwaite", "residual", "between"]
    )
    p.add_argument("--ml", action="store_true", help="fit the LMM by ML instead of REML")
    p.add_argument("--backed", action="store_true", help="read X from disk in chunks")
    p.add_argument("-o", "--output", required=True, help="result CSV file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_contrasts(items):
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, expr = item.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise ValueError(f"--contrast must look like NAME=EXPR; got {item!r}")
        out[name.strip()] = expr.strip()
    return out


def run(args) -> int:
    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        raise FileNotFoundError(f"-o: the output folder {out_dir} does not exist")
    contrasts = _parse_contrasts(args.contrast)
    import anndata

    from pyflashmm._frontend.de import de

    adata = anndata.read_h5ad(path, backed="r" if args.backed else None)
    random = args.random if args.random is None or len(args.random) > 1 else args.random[0]
    try:
        table = de(
            adata,
            fixed=args.fixed,
            random=random,
            contrast=contrasts,
            method=args.method,
            layer=args.layer,
            transform=None if args.transform == "none" else args.transform,
            reml=not args.ml,
            df=args.df,
            progress=False if args.quiet else None,
        )
    finally:
        if args.backed:
            adata.file.close()
    table.to_csv(args.output, index=False)
    return 0
