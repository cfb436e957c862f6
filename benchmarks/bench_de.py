"""Time ``pyflashmm.de`` with one contrast against five on the same data: the model is fitted
once and every contrast is tested on that fit, so five contrasts should cost little more than
one (target ≤ 1.3×).

Data: a simulated AnnData with real-looking names (``donor_id``, ``cell_type``, ``condition``;
counts in ``layers["counts"]``), ``--cells`` cells × ``--genes`` genes, 20 donors, 5 cell types.
Per method, the median wall time of ``--repeats`` calls after a warm-up call:

* ``lmm``: ``~ 0 + log(n_counts) + cell_type + cell_type:condition``, ``(1|donor_id)``; the
  contrasts are the condition effect within each cell type (one) or within all five (five);
* ``pseudobulk``: per cell type, ``~ condition + batch``; contrasts ``conditionstim`` (one)
  and five linear combinations of the coefficients (five);
* ``nbglm`` (cell level, DESeq2's single-cell settings, LRT): ``~ cell_type + condition``;
  five contrasts of its coefficients, each an LRT with its own reduced model (a GLM refitted
  over every cell, as DESeq2's ``nbinomLRT``: the one cost that grows with the contrasts);
* ``nbglm_wald``: the same with ``test="wald"``.

Usage: ``python benchmarks/bench_de.py [--cells 20000] [--genes 500] [--repeats 5]``; writes
``benchmarks/results/bench_de.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import pandas as pd

import pyflashmm as fm

CELL_TYPES = ["CD4 T", "CD8 T", "B cell", "NK", "CD14 Mono"]


def make_adata(n_cells, n_genes, seed=1):
    import anndata

    sim = fm.simulate_rnaseq(n_genes=n_genes, n_cells=n_cells, n_samples=20,
                             n_clusters=len(CELL_TYPES), n_de_genes=n_genes // 10,
                             rng=seed)  # fmt: skip
    obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical("D" + sim.obs["sam"].astype(str)),
            "cell_type": pd.Categorical.from_codes(sim.obs["cls"].cat.codes, CELL_TYPES),
            "condition": pd.Categorical.from_codes(sim.obs["trt"].cat.codes, ["ctrl", "stim"]),
            "n_counts": np.asarray(sim.counts.sum(axis=1)).ravel().astype(float),
        }
    )
    obs["batch"] = pd.Categorical(np.where(obs["donor_id"].cat.codes % 2 == 0, "b1", "b2"))
    obs.index = [f"cell{i}" for i in range(len(obs))]
    adata = anndata.AnnData(X=None, obs=obs, var=pd.DataFrame(index=sim.gene_names))
    adata.layers["counts"] = sim.counts
    return adata


def cases():
    within = {f"stim_in_{t}": f"cell_type{t}:conditionstim" for t in CELL_TYPES}
    nb_five = {
        "stim": "conditionstim",
        "batch": "batchb2",
        "stim_minus_batch": "conditionstim - batchb2",
        "stim_plus_batch": "conditionstim + batchb2",
        "half_stim": "conditionstim/2",
    }
    cell_five = {
        "stim": "conditionstim",
        "B_vs_T": "cell_typeB cell - cell_typeCD8 T",
        "NK": "cell_typeNK",
        "mono": "cell_typeCD14 Mono",
        "stim_plus_NK": "conditionstim + cell_typeNK",
    }
    return {
        "lmm": (
            {
                "fixed": "~ 0 + log(n_counts) + cell_type + cell_type:condition",
                "random": "(1|donor_id)",
            },  # fmt: skip
            dict(list(within.items())[:1]),
            within,
        ),
        "pseudobulk": (
            {
                "method": "pseudobulk",
                "fixed": "~ condition + batch",
                "random": "donor_id",
                "cell_type": "cell_type",
            },  # fmt: skip
            {"stim": "conditionstim"},
            nb_five,
        ),
        "nbglm": (
            {"method": "nbglm", "fixed": "~ cell_type + condition"},
            {"stim": "conditionstim"},
            cell_five,
        ),
        "nbglm_wald": (
            {"method": "nbglm", "fixed": "~ cell_type + condition", "test": "wald"},
            {"stim": "conditionstim"},
            cell_five,
        ),
    }


def median_times(adata, kwargs, one, five, repeats):
    """Median seconds of ``de`` with ``one`` and with ``five`` contrasts, the two alternated
    (so that the machine's drift affects both alike), after a warm-up call of each."""
    t1, t5 = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for contrast in (one, five):  # warm-up: compilation, caches
            fm.de(adata, layer="counts", contrast=contrast, progress=False, **kwargs)
        for _ in range(repeats):
            for contrast, times in ((one, t1), (five, t5)):
                t = time.perf_counter()
                fm.de(adata, layer="counts", contrast=contrast, progress=False, **kwargs)
                times.append(time.perf_counter() - t)
    return float(np.median(t1)), float(np.median(t5))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=list(cases()), action="append")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "bench_de.json"))  # fmt: skip
    args = ap.parse_args(argv)
    adata = make_adata(args.cells, args.genes)
    rows = []
    for method, (kwargs, one, five) in cases().items():
        if args.only and method not in args.only:
            continue
        t1, t5 = median_times(adata, kwargs, one, five, args.repeats)
        rows.append({"method": method, "cells": args.cells, "genes": args.genes,
                     "one_contrast_s": t1, "five_contrasts_s": t5,
                     "ratio": t5 / t1})  # fmt: skip
        print(f"{method:10s} 1 contrast {t1:7.3f} s   5 contrasts {t5:7.3f} s   "
              f"ratio {t5 / t1:5.2f} (target <= 1.3)", flush=True)  # fmt: skip
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"repeats": args.repeats, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
