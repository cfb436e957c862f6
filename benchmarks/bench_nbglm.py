"""Time ``pyflashmm.nbglm`` against PyDESeq2 and (when Rscript is present) DESeq2 and glmGamPoi.

One run per configuration, fit only (data generation and I/O excluded), ratios printed:

* pseudobulk 2,000 genes × 250 samples (``~ cls + trt``) and 20,000 × 250;
* cell level 500 genes × 20,000 cells (sparse, poscounts, minmu 1e-6, Wald), ``~ grp``.

Usage: ``python benchmarks/bench_nbglm.py [--skip-r] [--skip-big] [--skip-cells]``.
PyDESeq2 runs with 2 workers (``n_cpus=2``). The pyflashmm time excludes JIT compilation
(a warm-up fit runs first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm import nbglm


def simulate(G, m, rng, n_cls=5, cell_level=False):
    if cell_level:
        cls = rng.integers(0, 2, m)
        X = np.column_stack([np.ones(m), cls])
        meta = pd.DataFrame({"cls": np.where(cls == 1, "B", "A")})
        base = np.exp(rng.normal(-1.0, 1.2, G))
        sf = np.exp(rng.normal(0, 0.4, m))
    else:
        cls = rng.integers(0, n_cls, m)
        trt = rng.integers(0, 2, m)
        X = np.column_stack(
            [np.ones(m)] + [(cls == k).astype(float) for k in range(1, n_cls)] + [trt]
        )
        meta = pd.DataFrame({"cls": [f"c{k}" for k in cls], "trt": np.where(trt == 1, "B", "A")})
        base = np.exp(rng.normal(4.0, 1.5, G))
        sf = np.exp(rng.normal(0, 0.4, m))
    beta = np.where(
        rng.random((G, X.shape[1] - 1)) < 0.1, rng.normal(0, 0.7, (G, X.shape[1] - 1)), 0
    )
    mu = sf[:, None] * base[None, :] * np.exp(X[:, 1:] @ beta.T)
    disp = (0.05 + 0.5 / base) * np.exp(rng.normal(0, 0.5, G))
    Y = rng.negative_binomial(1 / disp, 1 / (1 + mu * disp)).astype(np.float64)
    return Y, X, meta


def time_ours(Y, X, cell_level):
    kw = {"size_factors": "poscounts", "minmu": 1e-6, "min_replicates_for_replace": np.inf}
    kw = kw if cell_level else {}
    data = sp.csr_matrix(Y) if cell_level else Y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nbglm(data[:50] if not cell_level else data[:500], X[:50] if not cell_level else X[:500],
              **kw)  # warm-up / JIT  # fmt: skip
        t = time.perf_counter()
        nbglm(data, X, **kw)
    return time.perf_counter() - t


def time_pydeseq2(Y, meta, cell_level):
    try:
        from pydeseq2.dds import DeseqDataSet
    except ImportError:
        return np.nan
    design = "~cls" if cell_level else "~cls+trt"
    cnt = pd.DataFrame(Y.astype(int), index=[f"s{j}" for j in range(Y.shape[0])],
                       columns=[f"g{i}" for i in range(Y.shape[1])])  # fmt: skip
    meta = meta.set_index(cnt.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        dds = DeseqDataSet(counts=cnt, metadata=meta, design=design, quiet=True, n_cpus=2,
                           size_factors_fit_type="poscounts" if cell_level else "ratio",
                           min_mu=1e-6 if cell_level else 0.5,
                           refit_cooks=not cell_level)  # fmt: skip
        dds.deseq2()
    return time.perf_counter() - t


R_SCRIPT = r"""
suppressPackageStartupMessages({library(DESeq2); library(glmGamPoi)})
a <- commandArgs(TRUE); cts <- t(as.matrix(read.csv(a[1], header = FALSE)))
cd <- read.csv(a[2], stringsAsFactors = TRUE); cell <- a[3] == "1"
des <- if (cell) ~cls else ~cls + trt
storage.mode(cts) <- "integer"
dds <- DESeqDataSetFromMatrix(cts, cd, des)
t1 <- system.time({
  if (cell) { dds <- estimateSizeFactors(dds, type = "poscounts")
              dds <- DESeq(dds, minmu = 1e-6, minReplicatesForReplace = Inf, quiet = TRUE)
  } else dds <- DESeq(dds, quiet = TRUE)
})[["elapsed"]]
mm <- model.matrix(des, cd)
t2 <- system.time(glm_gp(cts, design = mm, size_factors = "normed_sum"))[["elapsed"]]
cat(t1, t2, "\n")
"""


def time_r(Y, meta, cell_level):
    if shutil.which("Rscript") is None:
        return np.nan, np.nan
    with tempfile.TemporaryDirectory() as d:
        np.savetxt(os.path.join(d, "y.csv"), Y, fmt="%d", delimiter=",")
        meta.to_csv(os.path.join(d, "cd.csv"), index=False)
        with open(os.path.join(d, "b.R"), "w") as fh:
            fh.write(R_SCRIPT)
        out = subprocess.run(["Rscript", os.path.join(d, "b.R"), os.path.join(d, "y.csv"),
                              os.path.join(d, "cd.csv"), "1" if cell_level else "0"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        try:
            t1, t2 = (float(v) for v in out.stdout.split()[-2:])
        except ValueError:
            return np.nan, np.nan
    return t1, t2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-r", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-cells", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    configs = [("pseudobulk 2000 x 250", 2000, 250, False)]
    if not args.skip_big:
        configs.append(("pseudobulk 20000 x 250", 20000, 250, False))
    if not args.skip_cells:
        configs.append(("cells 500 x 20000", 500, 20000, True))
    rows = []
    for label, G, m, cell in configs:
        Y, X, meta = simulate(G, m, rng, cell_level=cell)
        t_ours = time_ours(Y, X, cell)
        t_py = time_pydeseq2(Y, meta, cell)
        t_de, t_gp = (np.nan, np.nan) if args.skip_r else time_r(Y, meta, cell)
        rows.append({"config": label, "pyflashmm_s": t_ours, "pydeseq2_s": t_py,
                     "deseq2_s": t_de, "glmgampoi_s": t_gp,
                     "x_pydeseq2": t_py / t_ours, "x_deseq2": t_de / t_ours,
                     "x_glmgampoi": t_gp / t_ours})  # fmt: skip
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
