"""Benchmark of the NB mixed model (``pyflashmm._nbmm.fit.nbmm``) against glmmTMB per gene and,
where an R library with it is given, NEBULA — one run, same simulated data.

Data (``simulate``): ``--cells`` cells × ``--genes`` genes × ``--donors`` donors (equal sizes),
``~ cond`` with a donor-level condition (half the donors), one size factor per cell
(log-normal, sd 0.3), donor intercepts N(0, 0.3²), gene means log-uniform on [0.05, 5]
UMIs/cell, NB α per gene log-uniform on [0.05, 1], a condition effect on 20% of the genes.
The count matrix is sparse (CSR) throughout.

Measured:

* pyflashmm, 1 and 2 Numba threads: wall time of ``nbmm`` on all genes (validation and the CSR
  transpose included, JIT compilation excluded by a warm-up), medians of ``--repeats`` runs.
* glmmTMB (R, via ``Rscript``; skipped with a note when R or glmmTMB is missing):
  ``glmmTMB(y ~ cond + (1|donor) + offset(log(s)), family = nbinom2)`` with default control
  on ``--r-genes`` genes drawn at random from the same data, one thread (glmmTMB's default
  ``parallel = 1``; OMP/BLAS threads set to 1), timed per gene inside R (a warm-up fit first).
  The ratio per core is glmmTMB's mean s/gene ÷ pyflashmm's 1-thread s/gene (its median run
  over all genes ÷ genes, also a mean over genes; glmmTMB's median is reported too); the agreement
  of β on those genes is reported (glmmTMB's default nlminb stop is accurate to ≈ 1e-5).
* NEBULA (only when the environment variable ``NEBULA_LIB`` names an R library from which
  ``library(nebula)`` loads; never installed by this script): ``nebula(count, id, pred =
  model.matrix(~cond), offset = s, method = "LN" / "HL", ncore = 1)`` on all genes (its
  ``offset`` is the scaling factor, log-transformed internally), whole-call time ÷ genes, and
  its β on the glmmTMB genes against glmmTMB's.
* genes/s at ``--big-cells`` cells (same generator, ``--big-genes`` genes), 1 and 2 threads.

Results in ``benchmarks/results/bench_nbmm.json``. Usage:
``python benchmarks/bench_nbmm.py [--cells 20000] [--genes 500] [--donors 20] [--repeats 3]
[--r-genes 12] [--big-cells 100000] [--big-genes 100]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from pyflashmm._nbmm import fit as _fit

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; what <- args[2]
meta <- read.csv(file.path(dir, "meta.csv"))
meta$donor <- factor(meta$donor)
dims <- scan(file.path(dir, "dims.txt"), quiet = TRUE)
nc <- dims[1]; ng <- dims[2]; nnz <- dims[3]
rd <- function(f, type, size) readBin(file.path(dir, f), type, n = nnz, size = size)
ci <- rd("cell.bin", "integer", 4); gi <- rd("gene.bin", "integer", 4)
xv <- rd("val.bin", "double", 8)
if (what == "glmmtmb") {
  suppressPackageStartupMessages(library(glmmTMB))
  genes <- scan(file.path(dir, "rgenes.txt"), quiet = TRUE)
  col <- function(g) { y <- numeric(nc); k <- gi == g; y[ci[k] + 1] <- xv[k]; y }
  fit1 <- function(g) {
    d <- meta; d$y <- col(g)
    glmmTMB(y ~ cond + (1 | donor) + offset(log(s)), family = nbinom2, data = d)
  }
  invisible(fit1(genes[1]))  # warm-up
  out <- NULL
  for (g in genes) {
    d <- meta; d$y <- col(g)
    t0 <- proc.time()[["elapsed"]]
    f <- glmmTMB(y ~ cond + (1 | donor) + offset(log(s)), family = nbinom2, data = d)
    el <- proc.time()[["elapsed"]] - t0
    b <- fixef(f)$cond
    out <- rbind(out, data.frame(gene = g, seconds = el, b0 = b[[1]], b1 = b[[2]],
      sigma2 = VarCorr(f)$cond$donor[1, 1], theta = sigma(f),
      loglik = as.numeric(logLik(f)), conv = f$fit$convergence))
  }
  write.csv(out, file.path(dir, "glmmtmb.csv"), row.names = FALSE)
  writeLines(c(R.version.string, as.character(packageVersion("glmmTMB"))),
             file.path(dir, "rversion.txt"))
} else {
  .libPaths(c(Sys.getenv("NEBULA_LIB"), .libPaths()))  # nebula's own dependencies too
  suppressPackageStartupMessages({
    library(Matrix); library(nebula, lib.loc = Sys.getenv("NEBULA_LIB"))
  })
  count <- sparseMatrix(i = gi + 1, j = ci + 1, x = xv, dims = c(ng, nc))
  rownames(count) <- paste0("g", seq_len(ng) - 1)
  pred <- model.matrix(~cond, data = meta)
  out <- NULL
  for (m in c("LN", "HL")) {
    t0 <- proc.time()[["elapsed"]]
    r <- nebula(count, meta$donor, pred = pred, offset = meta$s, method = m, ncore = 1,
                verbose = FALSE)
    el <- proc.time()[["elapsed"]] - t0
    s <- r$summary
    out <- rbind(out, data.frame(method = m, seconds = el, gene = s$gene,
      b0 = s[["logFC_(Intercept)"]], b1 = s[["logFC_cond"]], conv = r$convergence))
  }
  write.csv(out, file.path(dir, "nebula.csv"), row.names = FALSE)
  writeLines(as.character(packageVersion("nebula")), file.path(dir, "nebversion.txt"))
}
"""


def simulate(cells, donors, genes, seed=0):
    rng = np.random.default_rng(seed)
    donor = np.repeat(np.arange(donors), cells // donors)
    m = donor.size
    cond = (donor % 2).astype(float)
    X = np.column_stack([np.ones(m), cond])
    s = np.exp(rng.normal(0.0, 0.3, m))
    base = np.exp(rng.uniform(np.log(0.05), np.log(5.0), genes))
    alpha = np.exp(rng.uniform(np.log(0.05), np.log(1.0), genes))
    eff = rng.normal(0.0, 0.3, genes) * (rng.random(genes) < 0.2)
    cols = []
    for g0 in range(0, genes, 50):  # in blocks: no dense cells × genes matrix
        g1 = min(genes, g0 + 50)
        b = rng.normal(0.0, 0.3, (donors, g1 - g0))
        mu = s[:, None] * base[None, g0:g1] * np.exp(eff[None, g0:g1] * cond[:, None] + b[donor])
        a = alpha[None, g0:g1]
        y = rng.negative_binomial(1.0 / a, 1.0 / (1.0 + a * mu)).astype(np.float64)
        cols.append(sp.csr_matrix(y))
    return sp.hstack(cols, format="csr"), X, donor, s


def time_fit(Y, X, donor, s, threads, repeats):
    numba.set_num_threads(threads)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f = _fit.nbmm(Y, X, donor, size_factors=s, warn=False)
        times.append(time.perf_counter() - t)
    G = Y.shape[1]
    med = float(np.median(times))
    return f, {
        "threads": threads,
        "times_s": times,
        "median_s": med,
        "s_per_gene": med / G,
        "genes_per_s": G / med,
    }


def machine():
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average_1_5_15min": list(os.getloadavg()),
    }


def export(d, Y, X, donor, s):
    """Data for R: meta.csv (donor, cond, s), the counts as (cell, gene, value) triplets."""
    C = Y.tocoo()
    (d / "dims.txt").write_text(f"{Y.shape[0]} {Y.shape[1]} {C.nnz}\n")
    C.row.astype(np.int32).tofile(d / "cell.bin")
    C.col.astype(np.int32).tofile(d / "gene.bin")
    C.data.astype(np.float64).tofile(d / "val.bin")
    with open(d / "meta.csv", "w") as fh:
        fh.write("donor,cond,s\n")
        for j, c, v in zip(donor, X[:, 1], s, strict=True):
            fh.write(f"d{j},{c:g},{float(v)!r}\n")
    (d / "run.R").write_text(R_SCRIPT)


def run_r(d, what, env_extra=None, timeout=3600):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(env_extra or {})
    p = subprocess.run(
        ["Rscript", str(d / "run.R"), str(d), what],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return p.returncode, (p.stderr or "")[-2000:]


def read_csv(path):
    import pandas as pd

    return pd.read_csv(path)


def beta_agreement(b_ref, b, se):
    """max |Δβ| (absolute, relative to max(|β|, 1e-3), and in SE units) over genes and
    coefficients."""
    d = np.abs(b - b_ref)
    return {
        "max_abs": float(d.max()),
        "max_abs_per_coefficient": [float(v) for v in d.max(axis=0)],
        "max_rel": float((d / np.maximum(np.abs(b_ref), 1e-3)).max()),
        "max_in_se": float((d / se).max()),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=20000)
    ap.add_argument("--donors", type=int, default=20)
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--r-genes", type=int, default=12)
    ap.add_argument("--big-cells", type=int, default=100000)
    ap.add_argument("--big-genes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-r-output", default=None, help="copy R's result tables to this folder")
    a = ap.parse_args()
    res = {"machine": machine(), "config": vars(a)}
    Y, X, donor, s = simulate(a.cells, a.donors, a.genes, a.seed)
    res["density"] = Y.nnz / (Y.shape[0] * Y.shape[1])
    res["mean_umi_per_cell"] = float(Y.sum() / Y.shape[0] / Y.shape[1])
    _fit.nbmm(Y[:, :5], X, donor, size_factors=s, warn=False)  # JIT warm-up
    fit, r1 = time_fit(Y, X, donor, s, 1, a.repeats)
    fit2, r2 = time_fit(Y, X, donor, s, 2, a.repeats)
    st, cnt = np.unique(fit.status, return_counts=True)
    res["pyflashmm"] = {
        "1_thread": r1,
        "2_threads": r2,
        "status": {str(k): int(v) for k, v in zip(st, cnt, strict=True)},
        "mean_iter": float(fit.n_iter.mean()),
        "threads_bitwise_equal": bool(
            np.array_equal(fit.coef, fit2.coef, equal_nan=True)
            and np.array_equal(fit.se, fit2.se, equal_nan=True)
        ),
    }
    print(f"pyflashmm: 1 thread {r1['median_s']:.2f} s ({r1['genes_per_s']:.1f} genes/s), "
          f"2 threads {r2['median_s']:.2f} s ({r2['genes_per_s']:.1f} genes/s)")  # fmt: skip

    rng = np.random.default_rng(a.seed + 1)
    rgenes = np.sort(rng.choice(a.genes, size=min(a.r_genes, a.genes), replace=False))
    have_r = shutil.which("Rscript") is not None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        gl = None
        if not have_r:
            res["glmmtmb"] = {"skipped": "Rscript not found"}
        else:
            export(d, Y, X, donor, s)
            (d / "rgenes.txt").write_text(" ".join(str(g) for g in rgenes) + "\n")
            rc, err = run_r(d, "glmmtmb")
            if rc != 0 or not (d / "glmmtmb.csv").exists():
                res["glmmtmb"] = {"skipped": f"R/glmmTMB failed (rc {rc}): {err[-500:]}"}
            else:
                gl = read_csv(d / "glmmtmb.csv")
                rv = (d / "rversion.txt").read_text().splitlines()
                gb = gl[["b0", "b1"]].to_numpy()
                # pyflashmm's s/gene is its (median) run time over all genes ÷ genes, a mean
                # over genes: glmmTMB's is compared on the same basis, its mean over the genes
                per_gene = float(np.mean(gl.seconds))
                res["glmmtmb"] = {
                    "r": rv[0],
                    "glmmtmb": rv[1],
                    "genes": [int(g) for g in gl.gene],
                    "seconds": [float(v) for v in gl.seconds],
                    "mean_s_per_gene": per_gene,
                    "median_s_per_gene": float(np.median(gl.seconds)),
                    "ratio_per_core": per_gene / r1["s_per_gene"],
                    "nlminb_convergence_codes": [int(v) for v in gl.conv],
                    "pyflashmm_vs_glmmtmb_beta": beta_agreement(
                        gb, fit.coef[rgenes], fit.se[rgenes]
                    ),
                }
                print(f"glmmTMB: mean {per_gene:.2f} s/gene; ratio per core "
                      f"{res['glmmtmb']['ratio_per_core']:.0f}x")  # fmt: skip
        neb_lib = os.environ.get("NEBULA_LIB")
        if not neb_lib:
            res["nebula"] = {
                "skipped": "NEBULA_LIB not set (NEBULA is not installed by this benchmark; "
                "set it to a private R library that has nebula)"
            }
        elif not have_r:
            res["nebula"] = {"skipped": "Rscript not found"}
        else:
            if not (d / "run.R").exists():
                export(d, Y, X, donor, s)
            rc, err = run_r(d, "nebula", {"NEBULA_LIB": neb_lib})
            if rc != 0 or not (d / "nebula.csv").exists():
                res["nebula"] = {"skipped": f"nebula failed to load or run (rc {rc}): {err[-500:]}"}
            else:
                nb = read_csv(d / "nebula.csv")
                res["nebula"] = {"version": (d / "nebversion.txt").read_text().strip()}
                for m in ("LN", "HL"):
                    t = nb[nb.method == m]
                    sec = float(t.seconds.iloc[0])
                    e = {
                        "seconds_all_genes": sec,
                        "genes_fitted": len(t),
                        "s_per_gene": sec / a.genes,
                        "pyflashmm_speedup_per_core": (sec / a.genes) / r1["s_per_gene"],
                        "convergence_codes": {
                            str(k): int(v) for k, v in t.conv.value_counts().items()
                        },
                    }
                    if gl is not None:
                        idx = {int(g[1:]): i for i, g in enumerate(t.gene)}
                        sel = [g for g in rgenes if g in idx]
                        tb = t[["b0", "b1"]].to_numpy()[[idx[g] for g in sel]]
                        gb = gl.set_index("gene").loc[sel, ["b0", "b1"]].to_numpy()
                        e["vs_glmmtmb_beta"] = beta_agreement(gb, tb, fit.se[sel])
                    res["nebula"][m] = e
                    print(f"NEBULA-{m}: {sec / a.genes * 1e3:.1f} ms/gene")

        if a.keep_r_output:
            Path(a.keep_r_output).mkdir(parents=True, exist_ok=True)
            for name in ("glmmtmb.csv", "nebula.csv"):
                if (d / name).exists():
                    shutil.copy(d / name, Path(a.keep_r_output) / name)

    Yb, Xb, db, sb = simulate(a.big_cells, a.donors, a.big_genes, a.seed + 2)
    _, b1 = time_fit(Yb, Xb, db, sb, 1, a.repeats)
    _, b2 = time_fit(Yb, Xb, db, sb, 2, a.repeats)
    res["big"] = {
        "cells": a.big_cells,
        "genes": a.big_genes,
        "density": Yb.nnz / (Yb.shape[0] * Yb.shape[1]),
        "1_thread": b1,
        "2_threads": b2,
    }
    print(f"{a.big_cells} cells: 1 thread {b1['genes_per_s']:.1f} genes/s, "
          f"2 threads {b2['genes_per_s']:.1f} genes/s")  # fmt: skip
    res["load_average_at_end"] = list(os.getloadavg())  # other work on the machine skews times
    out = Path(__file__).parent / "results" / "bench_nbmm.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
