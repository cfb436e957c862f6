r"""Mock nulls on real data (Crowell et al. 2020, Squair et al. 2021): random donor splits.

Any ``.h5ad`` with a donor and a cell-type column will do. Each split r assigns the donors at
random to two mock groups of ⌊S/2⌋ and ⌈S/2⌉ (a permutation drawn from the r-th child of
``SeedSequence(seed)``); no gene can differ between the groups except by chance, so every
rejection is a false positive and a calibrated method rejects a fraction α of the tests at
level α. The mock group is tested within each cell type with at least ``min_cells`` cells in
both groups (the ``cell_type:mock`` question) by every method of ``methods``, through
:func:`validation.scenario_methods.test_data` (the models, contrasts and timings are described
there): the package's LMMs (``lmm`` with Kenward–Roger df, ``lmm_satterthwaite``,
``lmm_between_within``, ``lmm_moderated``: one fit of all the cells, ``~ log(libsize) +
cell_type + cell_type:mock``, the cell type's interaction tested), ``lm`` (no donor effect),
``nbmm`` (NB GLMM), ``pseudobulk`` (DESeq2-style NB GLM on the cell type's donor sums),
``nbglm_cells`` and ``wilcoxon`` (cells as replicates), ``dream`` (voom-weighted LMM on donor ×
cell-type sums), and, where R and their packages are installed, ``edger_ql``, ``limma_voom``,
``deseq2_r``, ``glmmtmb`` and ``lmertest`` (the last two on ``r_gene_subset`` random genes).
Default: every Python method and the R methods that can run; an R method that cannot is
skipped with a note.

Outputs (``out``): ``mock_null_pvalues.csv.gz`` (split, method, cell type, gene, p-value,
log fold change and its scale, status, seconds), ``mock_null_type1.csv``: per method and cell
type, and per method over all cell types, the type-I error at α ∈ {0.05, 0.01, 0.001} with its
Wilson 95% interval and the tail counts at 10⁻³ and 10⁻⁴ against their Poisson 99% interval
(:mod:`validation.metrics`), and ``mock_null_notes.csv`` (what was skipped or warned, per split).

Command line: ``python -m validation.mock_null DATA.h5ad --donor COL --cell-type COL
[--layer counts] [--keep COL=VALUE] [--splits 20] [--methods lmm,pseudobulk,...]
[--r-gene-subset 50] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from validation import scenario_methods
from validation.metrics import tail_counts, wilson_interval
from validation.provenance import write_table
from validation.scenario_methods import cells_with_counts, check_methods

__all__ = ["METHODS", "cells_with_counts", "mock_splits", "run", "run_split", "type1_table"]

#: every method id :func:`run` accepts (:data:`validation.scenario_methods.METHODS`)
METHODS = tuple(scenario_methods.METHODS)
ALPHAS = (0.05, 0.01, 0.001)
MOCK, GROUP_A, GROUP_B = "mock", "groupA", "groupB"


def mock_splits(donors, n_splits: int, seed: int) -> list[dict]:
    """``n_splits`` random balanced assignments {donor: group}, one SeedSequence child each."""
    donors = list(donors)
    out = []
    for child in np.random.SeedSequence(seed).spawn(n_splits):
        perm = np.random.default_rng(child).permutation(len(donors))
        in_b = set(perm[: len(donors) // 2].tolist())
        out.append({d: (GROUP_B if i in in_b else GROUP_A) for i, d in enumerate(donors)})
    return out


def run_split(
    adata,
    split: dict,
    *,
    donor,
    cell_type,
    layer,
    methods=None,
    min_cells=10,
    r_gene_subset=50,
    seed=0,
) -> tuple[pd.DataFrame, list[str]]:
    """Every method's tests of one mock split ``{donor: group}`` within each cell type:
    (:func:`validation.scenario_methods.test_data`'s table, notes). Sets the obs column
    ``mock`` of ``adata`` (in place: no copy of the counts)."""
    adata.obs[MOCK] = pd.Categorical(adata.obs[donor].astype(str).map(split),
                                     categories=[GROUP_A, GROUP_B])  # fmt: skip
    return scenario_methods.test_data(
        adata,
        donor=donor,
        cell_type=cell_type,
        condition=MOCK,
        levels=(GROUP_A, GROUP_B),
        layer=layer,
        question="within",
        methods=methods,
        min_cells=min_cells,
        r_gene_subset=r_gene_subset,
        seed=seed,
    )


def type1_table(pvalues: pd.DataFrame) -> pd.DataFrame:
    """Type-I error with Wilson intervals and tail counts per (method, cell type) and per
    method over all cell types (``cell_type == "all"``; a method tested only on the average
    question, whose rows already say ``"all"``, gets that one row)."""
    out = []
    groups = list(pvalues.groupby(["method", "cell_type"], sort=True))
    groups += [((m, "all"), g) for m, g in pvalues.groupby("method", sort=True)
               if set(g["cell_type"].astype(str)) != {"all"}]  # fmt: skip
    for (method, ct), g in groups:
        p = g["p_value"].to_numpy(dtype=np.float64)
        n = int(np.isfinite(p).sum())
        row = {"method": method, "cell_type": ct, "n_tests": n, "n_failed": int(len(p) - n)}
        for a in ALPHAS:
            k = int((p <= a).sum())
            lo, hi = wilson_interval(k, n) if n else (np.nan, np.nan)
            row.update({f"type1_{a:g}": k / n if n else np.nan, f"lo_{a:g}": float(lo),
                        f"hi_{a:g}": float(hi)})  # fmt: skip
        for t in tail_counts(p, (1e-3, 1e-4)):
            key = f"{t['threshold']:g}"
            row.update({f"tail_{key}": t["observed"], f"expected_{key}": t["expected"],
                        f"tail_ok_{key}": t["within"]})  # fmt: skip
        out.append(row)
    return pd.DataFrame(out)


def run(
    path,
    *,
    donor,
    cell_type,
    layer=None,
    keep=None,
    n_splits=20,
    seed=1,
    methods=None,
    min_cells=10,
    r_gene_subset=50,
    out=None,
    progress=True,
):
    """Read ``path``, check the arguments, run every split; write the tables to ``out``.

    ``methods``: ids of :data:`METHODS` (default: every Python method and the R methods that
    can run here). Split r draws the R cell-level models' genes from seed ``seed + r``.
    Returns (p-values, type-I table, notes), the notes a DataFrame (``split``, ``note``).
    """
    import anndata as ad

    methods = None if methods is None else check_methods(methods)  # None: resolved per split
    if not (isinstance(n_splits, int) and n_splits >= 1):
        raise ValueError(f"n_splits must be a positive integer; got {n_splits!r}")
    if not Path(path).is_file():
        raise ValueError(f"path: no file {str(path)!r}")
    adata = ad.read_h5ad(path)
    for arg, col in (("donor", donor), ("cell_type", cell_type)):
        if col not in adata.obs.columns:
            raise ValueError(f"{arg}: no column {col!r} in obs of {path} "
                             f"(columns: {list(adata.obs.columns)[:12]})")  # fmt: skip
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer: no layer {layer!r} in {path} (layers: {list(adata.layers)})")
    if keep:
        col, _, value = keep.partition("=")
        if col not in adata.obs.columns or not value:
            raise ValueError(f"keep must be COLUMN=VALUE with a column of obs; got {keep!r}")
        adata = adata[adata.obs[col].astype(str) == value].copy()
    adata = cells_with_counts(adata, layer)
    donors = sorted(adata.obs[donor].astype(str).unique())
    if len(donors) < 4:
        raise ValueError(f"donor: a mock split needs at least 4 donors; {path} has {len(donors)}")
    frames, notes = [], []
    for r, split in enumerate(mock_splits(donors, n_splits, seed)):
        if progress:
            print(f"mock split {r + 1}/{n_splits}", file=sys.stderr)
        res, why = run_split(adata, split, donor=donor, cell_type=cell_type, layer=layer,
                             methods=methods, min_cells=min_cells, r_gene_subset=r_gene_subset,
                             seed=seed + r)  # fmt: skip
        frames.append(res.assign(split=r))
        notes += [{"split": r, "note": n} for n in why]
    pvalues = pd.concat(frames, ignore_index=True)
    pvalues = pvalues[["split"] + [c for c in pvalues.columns if c != "split"]]
    type1 = type1_table(pvalues)
    notes = pd.DataFrame(notes, columns=["split", "note"])
    if out is not None:
        out = Path(out)
        write_table(pvalues, out / "mock_null_pvalues.csv.gz", seed=seed)
        write_table(type1, out / "mock_null_type1.csv", seed=seed)
        write_table(notes, out / "mock_null_notes.csv", seed=seed)
    return pvalues, type1, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validation.mock_null",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("data", help="an .h5ad file (cells × genes)")
    p.add_argument("--donor", required=True, help="obs column of the donors")
    p.add_argument("--cell-type", required=True, help="obs column of the cell types")
    p.add_argument("--layer", default=None, help="layer holding raw counts (default: X)")
    p.add_argument("--keep", default=None, help="COLUMN=VALUE: only these cells (e.g. controls)")
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-cells", type=int, default=10)
    p.add_argument("--methods", default=None,
                   help="comma-separated ids (default: every Python method and the R methods "
                   f"that can run here); any of {','.join(METHODS)}")  # fmt: skip
    p.add_argument("--r-gene-subset", type=int, default=50,
                   help="genes of the R cell-level models (glmmtmb, lmertest)")  # fmt: skip
    p.add_argument("--out", default="validation/results/mock_null")
    a = p.parse_args(argv)
    methods = None if a.methods is None else tuple(a.methods.split(","))
    try:
        _, type1, notes = run(a.data, donor=a.donor, cell_type=a.cell_type, layer=a.layer,
                              keep=a.keep, n_splits=a.splits, seed=a.seed, methods=methods,
                              min_cells=a.min_cells, r_gene_subset=a.r_gene_subset,
                              out=a.out)  # fmt: skip
    except ValueError as exc:  # bad arguments: the message names them, no traceback
        p.error(str(exc))
    for note in dict.fromkeys(n for n in notes["note"] if "skipped" in n):
        print(note, file=sys.stderr)
    cols = ["method", "cell_type", "n_tests", "type1_0.05", "lo_0.05", "hi_0.05", "type1_0.01",
            "tail_0.001", "expected_0.001"]  # fmt: skip
    print(type1.loc[type1["cell_type"] == "all", cols].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
