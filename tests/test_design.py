"""design(): R model.matrix names/order/values (fixtures from R), chunks, random blocks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pyflashmm as fm
from pyflashmm._design import design

FIXTURES = Path(__file__).parent / "data" / "rmodelmatrix-4.2.2"
#: R wrote the values with 17 significant digits; log() may differ in the last bit
TOL = 1e-12
VIGNETTE = "~ 0 + log(libsize) + cls + cls:trt"


@pytest.fixture(scope="module")
def obs() -> pd.DataFrame:
    df = pd.read_csv(
        FIXTURES / "obs.csv", dtype={c: str for c in ["sam", "cls", "trt", "case", "grp"]}
    )
    levels = pd.read_csv(FIXTURES / "levels.csv", dtype=str)
    df["grp"] = pd.Categorical(df["grp"], categories=list(levels.level[levels.column == "grp"]))
    return df


def _formulas():
    return list(pd.read_csv(FIXTURES / "formulas.csv").itertuples(index=False))


@pytest.mark.parametrize("row", _formulas(), ids=lambda r: r.formula)
def test_matches_r_model_matrix(obs, row):
    ref = pd.read_csv(FIXTURES / f"mm_{row.id:02d}.csv")
    des = design(obs, row.formula)
    assert des.fixed_names == list(ref.columns)
    assert des.X.dtype == np.float64 and des.X.flags.c_contiguous
    np.testing.assert_allclose(des.X, ref.to_numpy(), rtol=TOL, atol=TOL)


def test_vignette_formula_names(obs):
    des = design(obs, VIGNETTE)
    assert des.fixed_names == [
        "log(libsize)",
        "cls1",
        "cls10",
        "cls2",
        "cls1:trtB",
        "cls10:trtB",
        "cls2:trtB",
    ]
    assert des.formulaic_names == [
        "log(libsize)",
        "cls[1]",
        "cls[10]",
        "cls[2]",
        "cls[1]:trt[T.B]",
        "cls[10]:trt[T.B]",
        "cls[2]:trt[T.B]",
    ]
    assert list(des.X_frame().columns) == des.fixed_names


def test_r_variable_order_in_interactions(obs):
    # R names the interaction by first appearance of the variables and varies trt fastest;
    # formulaic alone would give cls[T.10]:trt[A], cls[T.2]:trt[A], ...
    des = design(obs, "~ trt + cls:trt")
    # formulaic's spelling of the same columns, permuted into R's order
    assert des.formulaic_names[2:] == [
        "cls[T.10]:trt[A]",
        "cls[T.10]:trt[B]",
        "cls[T.2]:trt[A]",
        "cls[T.2]:trt[B]",
    ]
    assert des.fixed_names[2:] == ["trtA:cls10", "trtB:cls10", "trtA:cls2", "trtB:cls2"]
    col = des.fixed_names.index("trtB:cls2")
    expected = ((obs.trt == "B") & (obs.cls == "2")).to_numpy(float)
    np.testing.assert_array_equal(des.X[:, col], expected)


def test_character_levels_in_c_collation(obs):
    # "B" < "a" < "c" in byte order (R with LC_COLLATE=C)
    assert design(obs, "~ 0 + case").fixed_names == ["caseB", "casea", "casec"]


def test_categorical_order_is_kept(obs):
    assert design(obs, "~ 0 + grp").fixed_names == ["grpz", "grpa", "grpm"]
    assert design(obs, "~ grp").fixed_names == ["(Intercept)", "grpa", "grpm"]


def test_chunk_reuse_identical_columns(obs):
    des = design(obs, VIGNETTE, random=["sam", "~ 0 + sam:time"])
    mask = (obs.cls == "2").to_numpy()
    chunk = des.apply(obs[mask])
    assert chunk.fixed_names == des.fixed_names and chunk.random_names == des.random_names
    np.testing.assert_array_equal(chunk.X, des.X[mask])
    np.testing.assert_array_equal(chunk.Z.toarray(), des.Z.toarray()[mask])
    np.testing.assert_array_equal(chunk.d, des.d)
    # the chunk has one cluster: the other cluster columns are zero but present
    assert np.all(chunk.X[:, des.fixed_names.index("cls1")] == 0)
    # one row at a time and the chunks stacked give the full design
    parts = [des.spec.apply(obs.iloc[i : i + 7]) for i in range(0, len(obs), 7)]
    np.testing.assert_array_equal(np.vstack([p.X for p in parts]), des.X)
    np.testing.assert_array_equal(sp.vstack([p.Z for p in parts]).toarray(), des.Z.toarray())


def test_chunk_with_unseen_level_is_an_error(obs):
    des = design(obs, VIGNETTE, random="sam")
    bad = obs.iloc[:2].copy()
    bad.loc[bad.index[1], "cls"] = "7"
    with pytest.raises(ValueError, match=r"fixed: column 'cls'.*not present.*'7'"):
        des.apply(bad)
    bad = obs.iloc[:2].copy()
    bad.loc[bad.index[0], "sam"] = "C9"
    with pytest.raises(ValueError, match=r"random: column 'sam'.*'C9'"):
        des.apply(bad)


def test_random_grouping_column(obs):
    des = design(obs, VIGNETTE, random="sam")
    levels = sorted(obs.sam.unique())
    assert des.random_names == [f"sam{s}" for s in levels]
    assert isinstance(des.Z, sp.csr_matrix) and des.Z.dtype == np.float64
    np.testing.assert_array_equal(des.d, [len(levels)])
    dense = des.Z.toarray()
    np.testing.assert_array_equal(dense, (obs.sam.to_numpy()[:, None] == levels).astype(float))
    # same as R's model.matrix(~ 0 + sam)
    ref = pd.read_csv(FIXTURES / "mm_11.csv")
    assert des.random_names == list(ref.columns)
    np.testing.assert_array_equal(dense, ref.to_numpy())


def test_random_nested_and_crossed(obs):
    des = design(obs, "~ trt", random=["sam", "sam:cls", "case"])
    combos = obs.groupby(["sam", "cls"]).size().index  # observed combinations only
    assert des.d.tolist() == [obs.sam.nunique(), len(combos), 3]
    assert des.random_blocks == ["sam", "sam:cls", "case"]
    assert des.Z.shape == (len(obs), des.d.sum())
    names = des.random_names[des.d[0] : des.d[0] + des.d[1]]
    # R's model.matrix(~ 0 + sam:cls) order (sam fastest), all-zero columns dropped
    r_order = [f"sam{s}:cls{c}" for c in ["1", "10", "2"] for s in sorted(obs.sam.unique())]
    assert names == [nm for nm in r_order if nm in {f"sam{s}:cls{c}" for s, c in combos}]
    block = des.Z.toarray()[:, des.d[0] : des.d[0] + des.d[1]]
    assert np.all(block.sum(axis=1) == 1)
    for j, nm in enumerate(names):
        s, c = nm.split(":")
        expected = ((obs.sam == s[3:]) & (obs.cls == c[3:])).to_numpy(float)
        np.testing.assert_array_equal(block[:, j], expected)
    assert des.random_names[-3:] == ["caseB", "casea", "casec"]


def test_random_slope_formula(obs):
    des = design(obs, VIGNETTE, random=["sam", "~ 0 + sam:time"])
    ref = pd.read_csv(FIXTURES / "mm_12.csv")  # R: model.matrix(~ 0 + sam:time)
    q0 = des.d[0]
    assert des.random_names[q0:] == list(ref.columns)
    np.testing.assert_allclose(des.Z.toarray()[:, q0:], ref.to_numpy(), rtol=TOL, atol=TOL)
    assert des.d.tolist() == [6, 6]


def test_numeric_grouping_column_is_a_factor(obs):
    df = obs.assign(subject=obs.sam.map({s: i + 1 for i, s in enumerate(sorted(obs.sam.unique()))}))
    des = design(df, "~ trt", random="subject")
    assert des.random_names == [f"subject{i}" for i in range(1, 7)]


def test_no_random(obs):
    des = design(obs, "~ trt")
    assert des.Z.shape == (len(obs), 0) and des.d.tolist() == []


def test_feeds_summary_stats(obs, rng):
    des = design(obs, VIGNETTE, random="sam")
    Y = rng.normal(size=(len(obs), 3))
    stats = fm.summary_stats(Y, des.X_frame(), des.Z, des.d)
    np.testing.assert_allclose(stats.XX, des.X.T @ des.X)
    np.testing.assert_allclose(stats.ZY, des.Z.T @ Y)


# ---------------------------------------------------------------------------------- errors


def test_unknown_column_lists_close_matches(obs):
    with pytest.raises(KeyError, match=r"fixed: column 'trtt'.*close matches: \['trt'\]"):
        design(obs, "~ cls + trtt")
    with pytest.raises(KeyError, match=r"random: column 'samm'.*close matches: \['sam'\]"):
        design(obs, "~ cls", random="samm")
    with pytest.raises(KeyError, match=r"random: column 'tme'.*\['time'\]"):
        design(obs, "~ cls", random="~ 0 + sam:tme")


def test_nan_names_column_and_row(obs):
    df = obs.copy()
    df.loc[5, "x"] = np.nan
    with pytest.raises(ValueError, match=r"fixed: column 'x' has missing values.*row 5"):
        design(df, "~ x")
    df = obs.copy()
    df.loc[3, "sam"] = None
    with pytest.raises(ValueError, match=r"random: column 'sam' has missing.*row 3"):
        design(df, "~ x", random="sam")
    # a column not used may hold NaN
    design(df, "~ x")


def test_empty_levels_are_named(obs):
    df = obs.assign(cls=pd.Categorical(obs.cls, categories=["1", "2", "10", "99"]))
    with pytest.raises(ValueError, match=r"fixed: categorical column 'cls'.*no cells: \['99'\]"):
        design(df, VIGNETTE)
    df = obs.assign(sam=pd.Categorical(obs.sam, categories=[*sorted(obs.sam.unique()), "Z0"]))
    with pytest.raises(ValueError, match=r"random: .*'sam'.*\['Z0'\]"):
        design(df, "~ trt", random="sam")


def test_aliased_columns_are_named(obs):
    with pytest.raises(ValueError, match=r"not of full column rank.*'samB3'"):
        design(obs, "~ trt + sam")  # sam is nested in trt
    with pytest.raises(ValueError, match=r"not of full column rank.*'I\(2 \* x\)'"):
        design(obs, "~ x + I(2 * x)")


def test_formula_errors(obs):
    with pytest.raises(ValueError, match=r"fixed: cannot parse formula '~ cls \+'"):
        design(obs, "~ cls +")
    with pytest.raises(ValueError, match=r"fixed must be a one-sided formula"):
        design(obs, "y ~ cls")
    with pytest.raises(TypeError, match="fixed must be a formula string"):
        design(obs, None)
    with pytest.raises(ValueError, match=r"random formula '~ sam' has an intercept"):
        design(obs, "~ cls", random="~ sam")
    with pytest.raises(TypeError, match="random must"):
        design(obs, "~ cls", random=3)
    with pytest.raises(TypeError, match="obs must be a pandas DataFrame"):
        design(obs.to_numpy(), "~ cls")


def test_design_is_frozen(obs):
    des = design(obs, "~ trt")
    with pytest.raises(AttributeError):
        des.X = None


def test_logical_columns_coded_as_r_factors():
    # R 4.2.2: model.matrix(~ flag + x) -> (Intercept) flagTRUE x;
    #          model.matrix(~ x:flag)  -> (Intercept) x:flagFALSE x:flagTRUE
    obs = pd.DataFrame({"flag": [True, False, True, False], "x": [1.0, 2.0, 3.0, 5.0]})
    des = design(obs, "~ flag + x")
    assert des.fixed_names == ["(Intercept)", "flagTRUE", "x"]
    np.testing.assert_array_equal(des.X[:, 1], [1, 0, 1, 0])
    des = design(obs, "~ x:flag")
    assert des.fixed_names == ["(Intercept)", "x:flagFALSE", "x:flagTRUE"]
    np.testing.assert_array_equal(des.apply(obs.iloc[[1]]).X, [[1.0, 2.0, 0.0]])
