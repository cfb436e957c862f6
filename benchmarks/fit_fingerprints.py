"""SHA-256 fingerprints of fits on fixed inputs, to show that a refactor changed no result.

Run from the repository root at two revisions and compare the JSON files::

    python benchmarks/fit_fingerprints.py after.json
    PYTHONPATH=<old checkout>/src python benchmarks/fit_fingerprints.py before.json
    diff before.json after.json

It hashes the bytes of every result array of the simulator, the summary statistics, LMM fits
(K = 1 and 2, REML, ML), lmmtest, BLUPs, NB GLM fits (cell level and pseudobulk, Wald and LRT,
every DESeq2 fixture) and size factors, through the public API only. Hashes depend on the
machine (CPU, BLAS): compare runs on one machine. Set ``OPENBLAS_NUM_THREADS=1`` when comparing
with revisions whose LMM inference ran with more than one BLAS thread.
"""

import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

import pyflashmm as fm

ROOT = Path.cwd()
DESEQ = ROOT / "tests" / "data" / "deseq2-1.38.3"


def h(*arrays):
    m = hashlib.sha256()
    for a in arrays:
        if a is None:
            m.update(b"None")
            continue
        if sp.issparse(a):
            a = a.tocsr()
            for part in (a.data, a.indices, a.indptr):
                m.update(np.ascontiguousarray(part).tobytes())
            continue
        a = np.asarray(a)
        if a.dtype == object:
            m.update(repr(a.tolist()).encode())
        else:
            m.update(np.ascontiguousarray(a).tobytes())
    return m.hexdigest()[:16]


NB_FIELDS = (
    "base_mean",
    "log2_fold_change",
    "lfc_se",
    "stat",
    "p_value",
    "adj_p_value",
    "coef",
    "coef_se",
    "disp_gene_est",
    "disp_fit",
    "dispersion",
    "disp_map",
    "disp_outlier",
    "converged",
    "max_cooks",
    "replaced",
    "all_zero",
    "size_factors",
)


def nb_hashes(fit):
    return {f: h(getattr(fit, f)) for f in NB_FIELDS}


def lmm_hashes(fit):
    return {
        f: h(getattr(fit, f))
        for f in (
            "coef",
            "se",
            "t",
            "p_value",
            "cov",
            "theta",
            "se_theta",
            "fim_theta",
            "dlogL",
            "loglik",
            "niter",
            "status",
        )
    }


def main(out):
    warnings.simplefilter("ignore")
    res = {}
    sim = fm.simulate_rnaseq(
        n_genes=300, n_cells=20_000, n_samples=12, n_de_genes=20, var_random_effects=0.1, rng=2503
    )
    res["simulate"] = {
        "counts": h(sim.counts),
        "obs": h(
            sim.obs["sam"].astype(str).to_numpy(),
            sim.obs["cls"].astype(str).to_numpy(),
            sim.obs["trt"].astype(str).to_numpy(),
            sim.obs["libsize"].to_numpy(),
        ),
    }
    sim2 = fm.simulate_rnaseq(
        n_genes=50, n_cells=5000, null=True, samples_nested=False, var_subject_cluster=0.05, rng=7
    )
    res["simulate_null_crossed"] = {"counts": h(sim2.counts)}
    obs = sim.obs
    # LMM K = 1 (eigen path)
    dsg = fm.design(obs, "~ 0 + log(libsize) + cls + cls:trt", random="sam")
    st = fm.summary_stats(sim.counts, dsg.X_frame(), dsg.Z, dsg.d, transform="log2p1")
    res["sumstats_k1"] = {k: h(getattr(st, k)) for k in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm")}
    fit = fm.lmm(st)
    res["lmm_k1_reml"] = lmm_hashes(fit)
    t = fm.lmmtest(
        fit,
        {
            "c1": "cls1:trtB",
            "avg": "(cls1:trtB + cls2:trtB)/2",
            "joint": ["cls1:trtB", "cls2:trtB"],
        },
    )
    res["lmmtest_k1"] = {
        c: h(t[c].to_numpy()) for c in ("log_fc", "se", "stat", "df", "p_value", "adj_p_value")
    }
    t2 = fm.lmmtest(fit, {"c1": "cls1:trtB"}, df="between")
    res["lmmtest_between"] = {"p": h(t2["p_value"].to_numpy())}
    res["blups_k1"] = h(fm.random_effects(fit).to_numpy())
    fitml = fm.lmm(st, method="ML", nonneg=True)
    res["lmm_k1_ml_nonneg"] = lmm_hashes(fitml)
    # LMM K = 2 (dense path)
    dsg2 = fm.design(obs, "~ log(libsize) + cls + trt", random=["sam", "sam:cls"])
    st2 = fm.summary_stats(sim.counts, dsg2.X_frame(), dsg2.Z, dsg2.d, transform="log1p")
    fit2 = fm.lmm(st2)
    res["lmm_k2_reml"] = lmm_hashes(fit2)
    t3 = fm.lmmtest(fit2, {"trt": "trtB"})
    res["lmmtest_k2"] = {c: h(t3[c].to_numpy()) for c in ("df", "p_value")}
    res["blups_k2"] = h(fm.random_effects(fit2).to_numpy())
    # NB GLM, cell level (sparse), single-cell preset (LRT) and Wald
    X = dsg2.X_frame()
    genes = slice(0, 300)
    cnt = sim.counts[:, genes]
    res["nbglm_cells_sc"] = nb_hashes(fm.nbglm(cnt, X, preset="single_cell", contrast="trtB"))
    res["nbglm_cells_wald"] = nb_hashes(
        fm.nbglm(cnt, X, size_factors="poscounts", contrast="trtB", minmu=1e-6)
    )
    # NB GLM, pseudobulk
    pbc, groups = fm.pseudobulk(sim.counts, obs, ["sam", "cls"])
    pbc = np.asarray(pbc, dtype=float)
    groups = groups.copy()
    groups["trt"] = groups["sam"].astype(str).str[0]
    Xp = fm.design(groups, "~ cls + trt").X_frame()
    res["pseudobulk_sums"] = h(pbc)
    res["nbglm_pb_wald"] = nb_hashes(fm.nbglm(pbc, Xp, contrast="trtB"))
    res["nbglm_pb_sparse"] = nb_hashes(fm.nbglm(sp.csr_matrix(pbc), Xp, contrast="trtB"))
    res["nbglm_pb_lrt"] = nb_hashes(fm.nbglm(pbc, Xp, test="lrt", contrast="trtB"))
    cvec = np.zeros(Xp.shape[1])
    cvec[1], cvec[2] = 1.0, -1.0
    res["nbglm_pb_numeric"] = nb_hashes(fm.nbglm(pbc, Xp, contrast=cvec))
    # DESeq2 fixtures (outlier replacement, iterate size factors, local trend, ...)
    for d in sorted(p for p in DESEQ.iterdir() if p.is_dir()):
        if not (d / "counts.csv.gz").exists():
            continue
        cts = pd.read_csv(d / "counts.csv.gz", index_col=0)
        Y = np.ascontiguousarray(cts.T.to_numpy(dtype=np.float64))
        if not (d / "design.csv").exists():
            res[f"sf_{d.name}"] = h(fm.size_factors(Y, "iterate"))
            continue
        Xd = pd.read_csv(d / "design.csv")
        args = {}
        if (d / "reduced.csv").exists():
            args = {"test": "lrt", "reduced": pd.read_csv(d / "reduced.csv").to_numpy()}
        if d.name == "single_cell":
            args["preset"] = "single_cell"
        if d.name == "outliers_low_minmu":
            args["minmu"] = 1e-6
        res[f"deseq2_{d.name}"] = nb_hashes(fm.nbglm(Y, Xd, **args))
    Y2 = pd.read_csv(DESEQ / "two_group" / "counts.csv.gz", index_col=0).T.to_numpy(float)
    res["sf_iterate_two_group"] = h(fm.size_factors(np.ascontiguousarray(Y2), "iterate"))
    for m in ("ratio", "poscounts", "normed_sum"):
        res[f"sf_{m}_cells"] = h(fm.size_factors(cnt, m if m != "ratio" else "poscounts"))
    Path(out).write_text(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
