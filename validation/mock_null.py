r"""Mock nulls on real data (Crowell et al. 2020, Squair et al. 2021): random donor splits.

Any ``.h5ad`` with a donor and a cell-type column will do. Each split r assigns the donors at
random to two mock groups of ⌊S/2⌋ and ⌈S/2⌉ (a permutation drawn from the r-th child of
``SeedSequence(seed)``); no gene can differ between the groups except by chance, so every
rejection is a false positive and a calibrated method rejects a fraction α of the tests at
level α. Each method tests the mock group within each cell type with at least ``min_cells``
cells in both groups:

``lmm``
    :func:`pyflashmm.de` on the cell type's cells, ``fixed="~ log(libsize) + mock"``,
    ``random="(1|donor)"`` (log2(1 + count), REML, Kenward–Roger df).
``pseudobulk``
    :func:`pyflashmm.de` with ``method="pseudobulk"``: counts summed per donor and cell type,
    DESeq2's NB GLM of ``~ mock``.
``nbglm_cells``
    :func:`pyflashmm.de` with ``method="nbglm"`` on the cells of the cell type, ``~ mock``:
    cells taken as independent replicates (pseudoreplication; expected to be anti-conservative).
``wilcoxon``
    scanpy's default: counts scaled to 10⁴ per cell and log1p-transformed, then a two-sided
    Wilcoxon rank-sum test per gene between the cells of the two groups (normal approximation
    with tie correction, :func:`scipy.stats.mannwhitneyu`); cells as replicates too.

Outputs (``out``): ``mock_null_pvalues.csv.gz`` (split, method, cell type, gene, p-value,
status) and ``mock_null_type1.csv``: per method and cell type, and per method over all cell
types, the type-I error at α ∈ {0.05, 0.01, 0.001} with its Wilson 95% interval and the tail
counts at 10⁻³ and 10⁻⁴ against their Poisson 99% interval (:mod:`validation.metrics`).

Command line: ``python -m validation.mock_null DATA.h5ad --donor COL --cell-type COL
[--layer counts] [--keep COL=VALUE] [--splits 20] [--methods lmm,pseudobulk,...] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from validation.metrics import tail_counts, wilson_interval
from validation.provenance import write_table

METHODS = ("lmm", "pseudobulk", "nbglm_cells", "wilcoxon")
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


def _counts_of(adata, layer):
    m = adata.X if layer is None else adata.layers[layer]
    return sp.csr_matrix(m) if sp.issparse(m) else sp.csr_matrix(np.asarray(m))


def cells_with_counts(adata, layer):
    """``adata`` with an obs column ``libsize`` (each cell's total count, unless it has one),
    without the cells that have no count (their log library size is not finite)."""
    if "libsize" not in adata.obs.columns:
        adata.obs["libsize"] = np.asarray(_counts_of(adata, layer).sum(axis=1)).ravel()
    return adata[adata.obs["libsize"] > 0].copy()


def _wilcoxon(counts: sp.csr_matrix, in_b: np.ndarray) -> np.ndarray:
    lib = np.asarray(counts.sum(axis=1)).ravel()
    x = np.log1p(sp.diags(1e4 / np.maximum(lib, 1.0)) @ counts).toarray()
    with np.errstate(invalid="ignore", divide="ignore"):
        res = stats.mannwhitneyu(x[in_b], x[~in_b], axis=0, method="asymptotic")
    p = np.asarray(res.pvalue, dtype=np.float64)
    p[(x[in_b].std(axis=0) == 0) & (x[~in_b].std(axis=0) == 0)] = np.nan  # constant gene
    return p


def _de_method(method, adata, layer, donor, cell_type):
    import pyflashmm as fm

    contrast = {MOCK: f"{MOCK}{GROUP_B}"}
    if method == "lmm":
        return fm.de(adata, layer=layer, fixed=f"~ log(libsize) + {MOCK}",
                     random=f"(1|{donor})", contrast=contrast, progress=False)  # fmt: skip
    if method == "pseudobulk":
        return fm.de(adata, layer=layer, method="pseudobulk", fixed=f"~ {MOCK}",
                     random=donor, contrast=contrast, progress=False)  # fmt: skip
    return fm.de(adata, layer=layer, method="nbglm", fixed=f"~ {MOCK}", contrast=contrast,
                 progress=False)  # fmt: skip


def run_split(adata, split: dict, *, donor, cell_type, layer, methods, min_cells) -> pd.DataFrame:
    """The p-values of every method and cell type for one mock split."""
    obs = adata.obs
    mock = obs[donor].astype(str).map(split)
    rows = []
    for ct in obs[cell_type].astype(str).unique():
        cells = (obs[cell_type].astype(str) == ct).to_numpy()
        in_b = (mock == GROUP_B).to_numpy()[cells]
        if min(in_b.sum(), (~in_b).sum()) < min_cells:
            continue
        sub = adata[cells].copy()
        sub.obs[MOCK] = pd.Categorical(mock[cells], categories=[GROUP_A, GROUP_B])
        for method in methods:
            genes = sub.var_names.astype(str)
            try:
                if method == "wilcoxon":
                    p = _wilcoxon(_counts_of(sub, layer), in_b)
                    status = np.where(np.isnan(p), "constant", "ok")
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # per-gene fit warnings: in status
                        tab = _de_method(method, sub, layer, donor, cell_type)
                    tab = tab.set_index("variable").reindex(genes)
                    p = tab["p_value"].to_numpy(dtype=np.float64)
                    status = tab["status"].astype(str).to_numpy()
            except Exception as exc:  # noqa: BLE001 - a failing method is data, not a crash
                p = np.full(len(genes), np.nan)
                status = np.full(len(genes), f"failed: {type(exc).__name__}: {exc}"[:200])
            rows.append(pd.DataFrame({"method": method, "cell_type": ct, "gene": genes,
                                      "p_value": p, "status": status}))  # fmt: skip
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def type1_table(pvalues: pd.DataFrame) -> pd.DataFrame:
    """Type-I error with Wilson intervals and tail counts per (method, cell type) and per
    method over all cell types (``cell_type == "all"``)."""
    out = []
    groups = list(pvalues.groupby(["method", "cell_type"], sort=True))
    groups += [((m, "all"), g) for m, g in pvalues.groupby("method", sort=True)]
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
    methods=METHODS,
    min_cells=10,
    out=None,
    progress=True,
):
    """Read ``path``, check the arguments, run every split; write the tables to ``out``."""
    import anndata as ad

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods: unknown {bad}; choose from {list(METHODS)}")
    if not (isinstance(n_splits, int) and n_splits >= 1):
        raise ValueError(f"n_splits must be a positive integer; got {n_splits!r}")
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
    frames = []
    for r, split in enumerate(mock_splits(donors, n_splits, seed)):
        if progress:
            print(f"mock split {r + 1}/{n_splits}", file=sys.stderr)
        res = run_split(adata, split, donor=donor, cell_type=cell_type, layer=layer,
                        methods=methods, min_cells=min_cells)  # fmt: skip
        frames.append(res.assign(split=r))
    pvalues = pd.concat(frames, ignore_index=True)
    type1 = type1_table(pvalues)
    if out is not None:
        out = Path(out)
        write_table(pvalues, out / "mock_null_pvalues.csv.gz", seed=seed)
        write_table(type1, out / "mock_null_type1.csv", seed=seed)
    return pvalues, type1


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
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default="validation/results/mock_null")
    a = p.parse_args(argv)
    _, type1 = run(a.data, donor=a.donor, cell_type=a.cell_type, layer=a.layer, keep=a.keep,
                   n_splits=a.splits, seed=a.seed, methods=tuple(a.methods.split(",")),
                   min_cells=a.min_cells, out=a.out)  # fmt: skip
    cols = ["method", "cell_type", "n_tests", "type1_0.05", "lo_0.05", "hi_0.05", "type1_0.01",
            "tail_0.001", "expected_0.001"]  # fmt: skip
    print(type1.loc[type1["cell_type"] == "all", cols].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
