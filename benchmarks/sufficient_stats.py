"""Exact simulation of LMM summary statistics without materialising Y (benchmark inputs).

For y = Xβ + Zb + ε with b ~ N(0, σ_b² I), ε ~ N(0, σ² I) and W = [X | Z], the statistics
(Xᵀy, Zᵀy, yᵀy) are functions of m = Xβ + Zb, of Wᵀε ~ N(0, σ² WᵀW) and of
εᵀε = (Wᵀε)ᵀ(WᵀW)⁺(Wᵀε) + σ²χ²_{n−r} (r = rank W, the χ² independent of Wᵀε). Drawing those
gives statistics with exactly the distribution of those of real cell-level data, at a cost of
O((p + q)²·G) instead of O(n·G).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pyflashmm import SummaryStats


def vignette_design(rng, n, n_clusters=10, n_subjects=25, extra_factors=()):
    """X = [log libsize, cls (one-hot), cls:trtB] and Z = subject (+ extra crossed factors)."""
    cls = rng.integers(0, n_clusters, n)
    subj = rng.integers(0, n_subjects, n)
    trt = (subj >= n_subjects // 2).astype(float)  # subjects nested in treatment arms
    loglib = np.log(rng.lognormal(7.5, 0.3, n))
    onehot = np.eye(n_clusters)[cls]
    X = np.column_stack([loglib, onehot, onehot * trt[:, None]])  # p = 1 + 2·n_clusters
    blocks = [sp.csr_matrix((np.ones(n), (np.arange(n), subj)), shape=(n, n_subjects))]
    for levels in extra_factors:
        f = rng.integers(0, levels, n)
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), f)), shape=(n, levels)))
    Z = sp.hstack(blocks, format="csr")
    d = [n_subjects, *extra_factors]
    return X, Z, d


def tb_design(rng, n, n_clusters=29, n_donors=259):
    """The shape of FLASHMM's tuberculosis atlas model: p = 62, q = 259."""
    cls = rng.integers(0, n_clusters, n)
    donor = rng.integers(0, n_donors, n)
    tb = (donor % 2).astype(float)
    age = rng.normal(size=n_donors)[donor]
    sex = (rng.random(n_donors) < 0.5).astype(float)[donor]
    season = (rng.random(n_donors) < 0.5).astype(float)[donor]
    loglib = np.log(rng.lognormal(7.5, 0.3, n))
    onehot = np.eye(n_clusters)[cls]
    X = np.column_stack([loglib, age, sex, season, onehot, onehot * tb[:, None]])
    Z = sp.csr_matrix((np.ones(n), (np.arange(n), donor)), shape=(n, n_donors))
    return X, Z, [n_donors]


def simulate_stats(rng, X, Z, d, n_genes, theta=(0.1, 1.0), batch=2000) -> SummaryStats:
    """Summary statistics of ``n_genes`` genes drawn from the LMM, exactly, without Y."""
    n, p = X.shape
    q = Z.shape[1]
    W = sp.hstack([sp.csr_matrix(X), Z], format="csr")
    WW = (W.T @ W).toarray()
    evals, evecs = np.linalg.eigh(WW)
    keep = evals > evals.max() * 1e-12
    r = int(keep.sum())
    root = evecs[:, keep] * np.sqrt(evals[keep])  # WW = root rootᵀ on its range
    pinv_root = evecs[:, keep] / np.sqrt(evals[keep])
    # contiguous copies, as summary_stats returns them (the kernels expect C order)
    XX, ZX, ZZ = (np.ascontiguousarray(a) for a in (WW[:p, :p], WW[p:, :p], WW[p:, p:]))
    XY = np.empty((p, n_genes))
    ZY = np.empty((q, n_genes))
    Ynorm = np.empty(n_genes)
    blocks = np.repeat(np.arange(len(d)), d)
    for start in range(0, n_genes, batch):
        G = min(batch, n_genes - start)
        beta = rng.normal(0, 0.3, (p, G))
        b = rng.normal(size=(q, G)) * np.sqrt(np.asarray(theta)[blocks])[:, None]
        coefs = np.vstack([beta, b])  # m = W coefs
        sigma = np.sqrt(theta[-1])
        Wt_eps = sigma * (root @ rng.normal(size=(r, G)))
        eps2 = np.sum((pinv_root.T @ Wt_eps) ** 2, axis=0) + sigma**2 * rng.chisquare(n - r, G)
        WY = WW @ coefs + Wt_eps
        XY[:, start : start + G] = WY[:p]
        ZY[:, start : start + G] = WY[p:]
        Ynorm[start : start + G] = (
            np.einsum("ig,ig->g", coefs, WW @ coefs)
            + 2 * np.einsum("ig,ig->g", coefs, Wt_eps)
            + eps2
        )
    return SummaryStats(
        XX=XX, XY=XY, ZX=ZX, ZY=ZY, ZZ=ZZ, Ynorm=Ynorm, n=n, d=np.asarray(d),
        fixed_names=[f"x{j}" for j in range(p)], random_names=[f"z{j}" for j in range(q)],
        gene_names=[f"gene{g}" for g in range(n_genes)],
    )  # fmt: skip
