"""Small simulators shared by the NB GLM tests (real-looking names where names matter)."""

from __future__ import annotations

import numpy as np
import pandas as pd

GENES = ("CD3E", "CD4", "CD8A", "MS4A1", "CD14", "LYZ", "NKG7", "GNLY", "FCGR3A", "IL7R")


def gene_names(G):
    """G gene symbols: the markers above, then numbered ones (GENE11, …)."""
    return [GENES[g] if g < len(GENES) else f"GENE{g + 1}" for g in range(G)]


def two_group(rng, m=16, G=120, p_de=0.3):
    """NB counts (m × G) of a two-group design (intercept, conditionstim)."""
    grp = np.repeat([0.0, 1.0], m // 2)
    X = np.column_stack([np.ones(m), grp])
    base = np.exp(rng.normal(3.5, 1.2, G))
    lfc = np.where(rng.random(G) < p_de, rng.normal(0, 1, G), 0.0)
    sf = np.exp(rng.normal(0, 0.3, m))
    mu = sf[:, None] * base[None, :] * np.exp(np.outer(grp, lfc))
    disp = 0.05 + 1.0 / base
    Y = rng.negative_binomial(1 / disp, 1 / (1 + mu * disp)).astype(float)
    return Y, X


def three_arm(rng, m=24, G=150):
    """NB counts of a design with a donor batch and three conditions (ctrl, stim, IFN):
    columns Intercept, batchB, conditionstim, conditionIFN; counts as a DataFrame of genes."""
    cond = np.tile(["ctrl", "stim", "IFN"], m // 3)
    batch = np.repeat(["A", "B"], m // 2)
    X = pd.DataFrame(
        {
            "Intercept": np.ones(m),
            "batchB": (batch == "B").astype(float),
            "conditionstim": (cond == "stim").astype(float),
            "conditionIFN": (cond == "IFN").astype(float),
        }
    )
    base = np.exp(rng.normal(3.0, 1.2, G))
    beta = np.column_stack(
        [
            rng.normal(0, 0.2, G),
            np.where(rng.random(G) < 0.3, rng.normal(0, 1, G), 0.0),
            np.where(rng.random(G) < 0.3, rng.normal(0, 1, G), 0.0),
        ]
    )
    sf = np.exp(rng.normal(0, 0.3, m))
    mu = sf[:, None] * base[None, :] * np.exp(X.to_numpy()[:, 1:] @ beta.T)
    disp = 0.05 + 0.8 / base
    Y = rng.negative_binomial(1 / disp, 1 / (1 + mu * disp)).astype(float)
    return pd.DataFrame(Y, columns=gene_names(G)), X
