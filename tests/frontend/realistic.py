"""A scanpy-style AnnData as users hold it, built from the simulator with real-looking names.

obs: ``donor_id`` ("D01"…), ``cell_type`` ("CD4 T", "CD8 T", "B cell", "NK"), ``condition``
("ctrl"/"stim", constant within donors), ``batch``, ``n_counts`` — all categorical except
``n_counts``; barcodes as the index. Raw counts in ``layers["counts"]`` (CSR), log-normalised
values in ``X`` (float32), gene symbols as ``var_names``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

import pyflashmm as fm

CELL_TYPES = ("CD4 T", "CD8 T", "B cell", "NK")
SYMBOLS = (
    "CD3E", "CD3D", "CD4", "CD8A", "CD8B", "MS4A1", "CD79A", "CD79B", "NKG7", "GNLY", "GZMB",
    "PRF1", "IL7R", "CCR7", "LEF1", "TCF7", "SELL", "CD14", "LYZ", "S100A8", "S100A9", "FCGR3A",
    "HLA-DRA", "HLA-DRB1", "ISG15", "IFI6", "IFIT1", "IFIT3", "MX1", "OAS1", "STAT1", "IRF7",
    "CXCL10", "JUN", "FOS", "EGR1", "ACTB", "GAPDH", "B2M", "MALAT1", "RPL13", "RPS27",
    "MT-CO1", "MT-ND4", "TNF", "IL2RA", "FOXP3", "CTLA4", "PDCD1", "LAG3", "KLRB1", "KLRD1",
    "CD69", "CD27", "CD38", "XBP1", "JCHAIN", "MZB1", "PPBP", "PF4",
)  # fmt: skip


def realistic_adata(n_genes=60, n_cells=4000, n_donors=8, n_de_genes=12, seed=11,
                    var_random_effects=0.1, null=False):  # fmt: skip
    """The AnnData and the simulated truth (``SimulatedData``) behind it."""
    sim = fm.simulate_rnaseq(
        n_genes=n_genes, n_cells=n_cells, n_samples=n_donors, n_clusters=len(CELL_TYPES),
        n_de_genes=None if null else n_de_genes, min_beta=0.8, max_beta=1.2,
        var_random_effects=var_random_effects, null=null, rng=seed,
    )  # fmt: skip
    import anndata

    obs = sim.obs
    donors = pd.Categorical(obs["sam"].astype(str))
    donor_names = {d: f"D{k + 1:02d}" for k, d in enumerate(donors.categories)}
    types = {c: CELL_TYPES[k] for k, c in enumerate(obs["cls"].cat.categories)}
    arms = {a: ("ctrl", "stim")[k] for k, a in enumerate(obs["trt"].cat.categories)}
    rng = np.random.default_rng(seed)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(len(obs))]
    donor = obs["sam"].astype(str).map(donor_names)
    new_obs = pd.DataFrame(
        {
            "donor_id": pd.Categorical(donor, categories=sorted(donor_names.values())),
            "cell_type": pd.Categorical(obs["cls"].map(types).astype(str),
                                        categories=list(CELL_TYPES)),
            "condition": pd.Categorical(obs["trt"].map(arms).astype(str),
                                        categories=["ctrl", "stim"]),
            "batch": pd.Categorical(np.where(donor.str[-1].astype(int) % 2 == 0, "b1", "b2")),
            "n_counts": np.asarray(sim.counts.sum(axis=1)).ravel().astype(np.float64),
        },
        index=pd.Index(barcodes),
    )  # fmt: skip
    genes = list(SYMBOLS[:n_genes]) + [f"LINC{k:05d}" for k in range(max(0, n_genes - 60))]
    counts = sp.csr_matrix(sim.counts, dtype=np.float32)
    lognorm = counts.multiply(1e4 / np.maximum(new_obs["n_counts"].to_numpy(), 1)[:, None])
    lognorm = sp.csr_matrix(lognorm, dtype=np.float32)
    lognorm.data = np.log1p(lognorm.data)
    adata = anndata.AnnData(X=lognorm, obs=new_obs, var=pd.DataFrame(index=genes))
    adata.layers["counts"] = counts
    truth = sim.de_genes.assign(
        gene=[genes[sim.var.index.get_loc(g)] for g in sim.de_genes["gene"]],
        cell_type=sim.de_genes["cluster"].map(types),
    )
    return adata, truth
