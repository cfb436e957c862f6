"""Time ``pyflashmm.nbglm`` against PyDESeq2 and (when Rscript is present) DESeq2 and glmGamPoi.

Fit only (data generation and I/O excluded), ratios printed and written to
``benchmarks/results/bench_nbglm.json``:

* pseudobulk 2,000 genes × 250 samples (``~ cls + trt``) and 20,000 × 250;
* cell level 500 genes × 20,000 cells (sparse, poscounts, minmu 1e-6, Wald), ``~ grp``;
* fit + 1 contrast vs fit + 5 contrasts (pyflashmm only): pseudobulk 2,000 × 250 (Wald, 5 of
  the coefficients of ``~ cls + trt``) and cells 500 × 20,000 with ``preset="single_cell"``
  (LRT, the 5 group coefficients of ``~ group``, 6 groups). "1" is ``nbglm(..., contrast=c1)``
  (the fit and its test of c1); "5" is the same call followed by ``nbglm_test(fit, [c2, …,
  c5])``. Both are timed alternately, medians over ``--repeats`` after a warm-up; the test-only
  ratio compares ``nbglm_test`` of 5 contrasts with that of 1 on the same fit.

Usage: ``python benchmarks/bench_nbglm.py [--skip-r] [--skip-big] [--skip-cells]
[--skip-contrasts] [--repeats 3]``.
pyflashmm: median wall and CPU (``time.process_time``) time over ``--repeats`` fits after a
warm-up fit (JIT compilation excluded). PyDESeq2 (2 workers, ``n_cpus=2``), DESeq2 and
glmGamPoi: one run each. At cell level DESeq2 is timed on the first ``--r-cell-genes`` genes
(default 100) and scaled linearly to 500 (its per-gene loops are independent); the JSON
records this as ``deseq2_scaled_from_genes``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm import nbglm, nbglm_test


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


def time_ours(Y, X, cell_level, repeats=3):
    """Median (wall, cpu) seconds of ``repeats`` fits after a warm-up fit."""
    kw = {"size_factors": "poscounts", "minmu": 1e-6, "min_replicates_for_replace": np.inf}
    kw = kw if cell_level else {}
    data = sp.csr_matrix(Y) if cell_level else Y
    walls, cpus = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n0 = 500 if cell_level else 50
        nbglm(data[:n0], X[:n0], **kw)  # warm-up / JIT
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            nbglm(data, X, **kw)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus))


def simulate_groups(G, m, rng, n_groups, cell_level):
    """Counts (m × G) of a one-factor design with ``n_groups`` levels and its design frame
    (Intercept, groupB, groupC, …), cell-level (low counts) or pseudobulk-level means."""
    grp = np.r_[np.arange(n_groups), rng.integers(0, n_groups, m - n_groups)]
    names = [f"group{chr(ord('A') + k)}" for k in range(1, n_groups)]
    X = pd.DataFrame(np.eye(n_groups)[grp][:, 1:], columns=names)
    X.insert(0, "Intercept", 1.0)
    base = np.exp(rng.normal(-1.0 if cell_level else 4.0, 1.2, G))
    sf = np.exp(rng.normal(0, 0.4, m))
    beta = np.where(rng.random((G, n_groups - 1)) < 0.1, rng.normal(0, 0.7, (G, n_groups - 1)), 0)
    mu = sf[:, None] * base[None, :] * np.exp(X.to_numpy()[:, 1:] @ beta.T)
    disp = (0.05 + 0.5 / base) * np.exp(rng.normal(0, 0.5, G))
    Y = rng.negative_binomial(1 / disp, 1 / (1 + mu * disp)).astype(np.float64)
    return Y, X


def time_contrasts(data, X, contrasts, kw, repeats):
    """Median seconds of fit + 1 contrast and fit + 5 contrasts (module docstring), timed
    alternately, and of ``nbglm_test`` alone with 1 and with 5 contrasts."""
    one, five, test1, test5 = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = nbglm(data, X, contrast=contrasts[0], **kw)  # warm-up / JIT
        nbglm_test(fit, contrasts)
        for _ in range(repeats):
            t = time.perf_counter()
            nbglm(data, X, contrast=contrasts[0], **kw)
            one.append(time.perf_counter() - t)
            t = time.perf_counter()
            fit = nbglm(data, X, contrast=contrasts[0], **kw)
            nbglm_test(fit, contrasts[1:])
            five.append(time.perf_counter() - t)
            t = time.perf_counter()
            nbglm_test(fit, contrasts[:1])
            test1.append(time.perf_counter() - t)
            t = time.perf_counter()
            nbglm_test(fit, contrasts)
            test5.append(time.perf_counter() - t)
    return [float(np.median(v)) for v in (one, five, test1, test5)]


def contrast_rows(repeats):
    """The fit + 1 vs fit + 5 contrasts cases (module docstring)."""
    rng = np.random.default_rng(2)
    Y, X, _ = simulate(2000, 250, rng)
    names = ["Intercept", "clsc1", "clsc2", "clsc3", "clsc4", "trtB"]
    pb = (Y, pd.DataFrame(X, columns=names), ["trtB", "clsc1", "clsc2", "clsc3", "clsc4"], {})
    Yc, Xc = simulate_groups(500, 20000, rng, 6, cell_level=True)
    cells = (sp.csr_matrix(Yc), Xc, list(Xc.columns[1:]), {"preset": "single_cell"})
    rows = []
    for label, (data, X, contrasts, kw) in (
        ("pseudobulk 2000 x 250, Wald", pb),
        ("cells 500 x 20000, single_cell (LRT)", cells),
    ):
        one, five, test1, test5 = time_contrasts(data, X, contrasts, kw, repeats)
        rows.append(
            {
                "config": label,
                "fit_1_contrast_s": one,
                "fit_5_contrasts_s": five,
                "ratio_5_vs_1": five / one,
                "test_1_s": test1,
                "test_5_s": test5,
                "test_ratio_5_vs_1": test5 / test1,
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    return rows


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


#: DESeq2 + glmGamPoi timing script, shared with validation/runtime.py
R_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "validation",
                        "R", "deseq2_glmgampoi_time.R")  # fmt: skip


def time_r(Y, meta, cell_level, n_genes_deseq2=None):
    """(DESeq2 s, glmGamPoi s); DESeq2 on the first ``n_genes_deseq2`` genes when given."""
    if shutil.which("Rscript") is None:
        return np.nan, np.nan
    nsub = Y.shape[1] if n_genes_deseq2 is None else int(n_genes_deseq2)
    with tempfile.TemporaryDirectory() as d:
        np.savetxt(os.path.join(d, "y.csv"), Y, fmt="%d", delimiter=",")
        meta.to_csv(os.path.join(d, "cd.csv"), index=False)
        out = subprocess.run(["Rscript", R_SCRIPT, os.path.join(d, "y.csv"),
                              os.path.join(d, "cd.csv"), "1" if cell_level else "0", str(nsub)],
                             capture_output=True, text=True, check=False)  # fmt: skip
        try:
            t1, t2 = (float(v) for v in out.stdout.split()[-2:])
        except ValueError:
            return np.nan, np.nan
    return t1 * Y.shape[1] / nsub, t2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-r", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-cells", action="store_true")
    ap.add_argument("--skip-pydeseq2", action="store_true")
    ap.add_argument("--skip-contrasts", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--r-cell-genes", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "bench_nbglm.json"))  # fmt: skip
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
        t_ours, c_ours = time_ours(Y, X, cell, args.repeats)
        t_py = np.nan if args.skip_pydeseq2 else time_pydeseq2(Y, meta, cell)
        nsub = min(args.r_cell_genes, G) if cell else None
        t_de, t_gp = (np.nan, np.nan) if args.skip_r else time_r(Y, meta, cell, nsub)
        rows.append({"config": label, "pyflashmm_s": t_ours, "pyflashmm_cpu_s": c_ours,
                     "pydeseq2_s": t_py, "deseq2_s": t_de, "glmgampoi_s": t_gp,
                     "x_pydeseq2": t_py / t_ours, "x_deseq2": t_de / t_ours,
                     "x_glmgampoi": t_gp / t_ours,
                     "deseq2_scaled_from_genes": nsub if (cell and not args.skip_r) else None,
                     })  # fmt: skip
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    contrasts = [] if args.skip_contrasts else contrast_rows(args.repeats)
    if any(r["deseq2_scaled_from_genes"] for r in rows):
        print("cell level: DESeq2 timed on a gene subset and scaled linearly to 500 genes")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"cpu_count": os.cpu_count(), "repeats": args.repeats,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    with open(args.out, "w") as fh:
        out = {"meta": meta, "rows": json.loads(df.to_json(orient="records"))}
        if contrasts:
            out["contrasts"] = contrasts
        json.dump(out, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
