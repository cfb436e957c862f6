"""The committed lme4 1.1.31 / lmerTest 3.1.3 reference fits (``tests/data/lme4-1.1.31/``).

Loaders shared by the tests (``tests/test_lme4_reference.py``, ``tests/test_inference.py``)
and the agreement experiment (:mod:`validation.agreement`), so that both compare against the
same data, design matrices and fits. The fixtures and the R script that wrote them
(``make_fixtures.R``, ``make_contrast_fixtures.R``) stay next to each other in ``tests/data``;
see the README there.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd

import pyflashmm as fm
from validation.provenance import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "lme4-1.1.31"
SCENARIOS = ("k1", "k2_crossed", "k2_nested", "between")
#: pyflashmm's convergence tolerance (max |score|) and iteration cap for the reference fits
TOL, MAX_ITER = 1e-10, 200


@functools.cache
def load(scenario: str):
    """Data, design and lme4's results of one scenario."""
    root = DATA / scenario
    spec = pd.read_csv(root / "spec.csv").iloc[0]
    data = pd.read_csv(root / "data.csv.gz")
    genes = spec["genes"].split(";")
    Y = data[genes].to_numpy(dtype=np.float64)
    if spec["transform"] == "log2p1":
        Y = np.log2(1.0 + Y)
    X, x_names = model_matrix(data, spec["fixed"])
    random = spec["random"].split(";")
    Z, d, z_levels = indicators(data, random)
    ref = {name: pd.read_csv(root / f"{name}.csv") for name in ("fixef", "theta", "fit", "ranef")}
    return {
        "genes": genes,
        "Y": Y,
        "X": X,
        "x_names": x_names,
        "Z": Z,
        "d": d,
        "random": random,
        "z_levels": z_levels,
        **ref,
    }


def model_matrix(data: pd.DataFrame, rhs: str):
    """R's ``model.matrix`` for the terms used here: intercept, numeric columns, ``log(col)``,
    and factors with treatment contrasts (levels sorted, first level dropped, named
    ``<column><level>``) — the column order of R's design matrix."""
    cols, names = [np.ones(len(data))], ["(Intercept)"]
    for term in rhs.removeprefix("~").strip().split(" + "):
        m = re.fullmatch(r"log\((\w+)\)", term)
        if m:
            cols.append(np.log(data[m.group(1)].to_numpy(dtype=np.float64)))
            names.append(term)
        elif pd.api.types.is_numeric_dtype(data[term]):
            cols.append(data[term].to_numpy(dtype=np.float64))
            names.append(term)
        else:
            levels = sorted(data[term].unique())
            for level in levels[1:]:
                cols.append((data[term] == level).to_numpy(dtype=np.float64))
                names.append(f"{term}{level}")
    return np.column_stack(cols), names


def indicators(data: pd.DataFrame, random: list[str]):
    """Dense Z: one block of indicator columns per random term (``a`` or ``a:b``), in the order
    of ``random``; within a block the observed levels, sorted (lme4's level order)."""
    blocks, d, levels = [], [], []
    for term in random:
        group = data[term.split(":")].astype(str).agg(":".join, axis=1).to_numpy()
        lv = np.array(sorted(set(group)))
        blocks.append((group[:, None] == lv[None, :]).astype(np.float64))
        d.append(len(lv))
        levels.append(lv)
    return np.hstack(blocks), np.array(d), levels


def reference(ref, method: str, gene: str):
    """lme4's fixed effects, variance components and fit summary of one gene of a loaded
    scenario ``ref``, for ``method`` (REML or ML)."""
    fx = ref["fixef"].query("method == @method and gene == @gene")
    th = ref["theta"].query("method == @method and gene == @gene")
    fit = ref["fit"].query("method == @method and gene == @gene").iloc[0]
    return fx, th, fit


def singular_genes(scenario: str) -> list[str]:
    """Genes whose lme4 fit is singular (a variance component at the boundary 0)."""
    fit = load(scenario)["fit"]
    return sorted(set(fit.loc[fit["isSingular"], "gene"]))


@functools.cache
def pyfit(scenario: str, method: str, nonneg: bool, genes: tuple[str, ...]):
    """pyflashmm's fit of ``genes`` of a scenario (cached: the tests fit each case once)."""
    s = load(scenario)
    cols = [s["genes"].index(g) for g in genes]
    return fm.lmmfit(
        s["Y"][:, cols],
        s["X"],
        s["Z"],
        s["d"],
        method=method,
        tol=TOL,
        nonneg=nonneg,
        max_iter=MAX_ITER,
        warn=False,
    )


def fit_scenario(scenario: str, method: str):
    """All genes of a scenario, named design columns (the lmerTest comparisons)."""
    s = load(scenario)
    X = pd.DataFrame(s["X"], columns=s["x_names"])
    return fm.lmmfit(s["Y"], X, s["Z"], s["d"], method=method, tol=TOL, max_iter=MAX_ITER,
                     warn=False)  # fmt: skip
