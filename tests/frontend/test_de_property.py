"""de() on generated cell tables: either a table with one row per gene × tested coefficient, or
a ValueError/TypeError whose message names the argument at fault — never another exception."""

from __future__ import annotations

import keyword
import re
import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyflashmm as fm

N_GENES = 12
#: words a message may use to name the argument at fault (de's own arguments, and the two
#: parts of ``data``)
ARGUMENT = re.compile(r"\b(data|counts|obs|fixed|random|contrast|layer|cell_type|method)\b")
#: Python keywords cannot be written unquoted in a formula (formulaic parses Python); every
#: other name, function names such as ``log``, ``center`` or ``scale`` included, is fair game
RESERVED = set(keyword.kwlist)

column_names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda s: s not in RESERVED
)


@st.composite
def cell_tables(draw):
    donor_col = draw(column_names)
    cond_col = draw(column_names.filter(lambda s: s != donor_col))
    n_donors = draw(st.integers(2, 7))
    sizes = draw(st.lists(st.integers(1, 25), min_size=n_donors, max_size=n_donors))
    arms = draw(st.lists(st.sampled_from(["ctrl", "stim"]), min_size=n_donors,
                         max_size=n_donors))  # fmt: skip
    donor_kind = draw(st.sampled_from(["categorical", "str", "int"]))
    cond_kind = draw(st.sampled_from(["categorical", "str", "int", "bool"]))
    unused = draw(st.booleans())
    donors = np.repeat([f"P{k}" for k in range(n_donors)], sizes)
    cond = np.repeat(arms, sizes)
    order = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(donors.size)
    donors, cond = donors[order], cond[order]
    if donor_kind == "categorical":
        cats = sorted(set(donors)) + (["P_unused"] if unused else [])
        donor_values = pd.Categorical(donors, categories=cats)
    elif donor_kind == "int":
        donor_values = np.array([int(d[1:]) for d in donors])
    else:
        donor_values = donors
    if cond_kind == "categorical":
        cond_values = pd.Categorical(cond, categories=["ctrl", "stim"] + (["other"] if unused
                                                                         else []))  # fmt: skip
    elif cond_kind == "int":
        cond_values = (cond == "stim").astype(int)
    elif cond_kind == "bool":
        cond_values = cond == "stim"
    else:
        cond_values = cond
    obs = pd.DataFrame({donor_col: donor_values, cond_col: cond_values},
                       index=[f"cell{i}" for i in range(donors.size)])  # fmt: skip
    seed = draw(st.integers(0, 2**16))
    method = draw(st.sampled_from(["lmm", "pseudobulk", "nbglm"]))
    return obs, donor_col, cond_col, seed, method


def _counts(n, seed):
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(1.0, 1.0, N_GENES))
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu), size=(n, N_GENES)).astype(np.float64)
    y[:, 0] += 1  # no cell without counts (a cell-level NB GLM needs a size factor per cell)
    return pd.DataFrame(y, columns=[f"GENE{j}" for j in range(N_GENES)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cell_tables())
def test_de_returns_a_table_or_names_the_argument(case):
    obs, donor_col, cond_col, seed, method = case
    counts = _counts(len(obs), seed)
    fixed = f"~ {cond_col}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = fm.de((counts, obs), fixed=fixed, random=donor_col, method=method)
    except (ValueError, TypeError) as exc:
        assert ARGUMENT.search(str(exc)), f"{type(exc).__name__}: {exc}"
        return
    present = obs.apply(lambda c: c.cat.remove_unused_categories() if c.dtype == "category" else c)
    n_coef = len(fm.design(present, fixed).fixed_names)  # the condition is donor-level
    assert len(table) == N_GENES * n_coef
    assert list(table["variable"].unique()) == list(counts.columns)
    assert table.groupby("contrast").size().eq(N_GENES).all()
