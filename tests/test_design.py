"""design(): R model.matrix names/order/values (fixtures from R), chunks, random blocks, errors."""

from __future__ import annotations

import re
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


# ------------------------------------------------------------- lme4 random terms and labels


def cell_table(rng, n: int = 600, n_donors: int = 8) -> pd.DataFrame:
    """A cell table as AnnData's obs holds it: categorical donor, cell type, condition, batch."""
    donors = [f"D{i:02d}" for i in range(1, n_donors + 1)]
    cell_types = ["CD4 T", "B cell", "NK"]
    donor = np.concatenate([donors, rng.choice(donors, n - n_donors)])  # every donor present
    cell_type = np.concatenate(
        [np.resize(cell_types, n_donors), rng.choice(cell_types, n - n_donors)]
    )
    arm = {d: ("ctrl" if i % 2 else "stim") for i, d in enumerate(donors)}  # donors in arms
    batch = {d: f"b{i % 3 + 1}" for i, d in enumerate(donors)}
    return pd.DataFrame(
        {
            "donor_id": pd.Categorical(donor, categories=donors),
            "cell_type": pd.Categorical(cell_type, categories=cell_types),
            "condition": pd.Categorical([arm[d] for d in donor], categories=["ctrl", "stim"]),
            "batch": pd.Categorical([batch[d] for d in donor], categories=["b1", "b2", "b3"]),
            "time": rng.uniform(0.0, 3.0, n),
            "libsize": rng.integers(500, 20_000, n).astype(float),
        },
        index=pd.Index([f"cell_{i:04d}" for i in range(n)], name="barcode"),
    )


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return cell_table(np.random.default_rng(7))


CELL_FIXED = "~ 0 + cell_type + cell_type:condition"


def assert_same_design(a, b):
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.Z.toarray(), b.Z.toarray())
    np.testing.assert_array_equal(a.d, b.d)
    for attr in ("fixed_names", "random_names", "random_blocks", "random_levels"):
        assert getattr(a, attr) == getattr(b, attr), attr


@pytest.mark.parametrize(
    ("lme4", "existing"),
    [
        ("(1|donor_id)", "donor_id"),
        ("(1 | donor_id)", "donor_id"),
        (" ( 1|donor_id ) ", "donor_id"),
        ("~ (1 | donor_id)", "donor_id"),
        ("~ 1 | donor_id", "donor_id"),  # nlme's spelling
        ("((1 | donor_id))", "donor_id"),
        ("(1 | `donor_id`)", "donor_id"),
        ("(1 | donor_id:cell_type)", "donor_id:cell_type"),
        ("(1|donor_id) + (1|batch)", ["donor_id", "batch"]),
        (["(1 | donor_id)", "(1 | batch)"], ["donor_id", "batch"]),
        (["(1 | donor_id)", "batch"], ["donor_id", "batch"]),
        ("(1 | donor_id/cell_type)", ["donor_id", "donor_id:cell_type"]),  # lme4 expands a/b
        ("(0 + time | donor_id)", "~ 0 + donor_id:time"),
        ("(-1 + time | donor_id)", "~ 0 + donor_id:time"),
        ("(time - 1 | donor_id)", "~ 0 + donor_id:time"),
        ("~ 0 + time | donor_id", "~ 0 + donor_id:time"),
        ("(1 + time || donor_id)", ["donor_id", "~ 0 + donor_id:time"]),
        ("(time || donor_id)", ["donor_id", "~ 0 + donor_id:time"]),
        ("(1 | donor_id) + (0 + time | donor_id)", ["donor_id", "~ 0 + donor_id:time"]),
        ("(0 + log(libsize) | donor_id)", "~ 0 + donor_id:log(libsize)"),
    ],
)
def test_lme4_terms_equal_the_existing_syntax(cells, lme4, existing):
    assert_same_design(design(cells, CELL_FIXED, lme4), design(cells, CELL_FIXED, existing))


def test_block_and_level_labels(cells):
    des = design(cells, CELL_FIXED, "(1 | donor_id/cell_type) + (1 + time || batch)")
    assert des.random_blocks == ["donor_id", "donor_id:cell_type", "batch", "batch:time"]
    assert des.d.tolist() == [8, len(cells.groupby(["donor_id", "cell_type"], observed=True)), 3, 3]
    q1, q2 = des.d[0], des.d[0] + des.d[1]
    assert des.random_levels[:q1] == [f"D{i:02d}" for i in range(1, 9)]
    assert des.random_names[:2] == ["donor_idD01", "donor_idD02"]
    # interaction levels: the donor varies fastest, as R's names
    assert des.random_levels[q1 : q1 + 2] == ["D01:CD4 T", "D02:CD4 T"]
    assert des.random_names[q1] == "donor_idD01:cell_typeCD4 T"
    assert des.random_levels[q2:] == ["b1", "b2", "b3"] * 2
    assert des.random_names[-1] == "batchb3:time"
    # the slope block holds time on its level's cells
    Zs = des.Z.toarray()[:, -3:]
    np.testing.assert_array_equal(Zs.sum(axis=1), cells["time"].to_numpy())
    # the spec carries the labels, and chunks keep them
    assert des.spec.random_blocks == des.random_blocks
    assert des.spec.random_levels == des.random_levels
    chunk = des.apply(cells.iloc[:50])
    assert chunk.random_blocks == des.random_blocks and chunk.random_levels == des.random_levels
    np.testing.assert_array_equal(chunk.Z.toarray(), des.Z.toarray()[:50])


def test_labels_of_the_existing_syntax(obs):
    des = design(obs, VIGNETTE, random=["sam", "sam:cls", "~ 0 + sam:time"])
    assert des.random_blocks == ["sam", "sam:cls", "sam:time"]
    levels = sorted(obs.sam.unique())
    assert des.random_levels[: len(levels)] == levels
    assert des.random_levels[-len(levels) :] == levels  # "samA1:time" → level "A1"
    assert des.spec.random == ("sam", "sam:cls", "~ 0 + sam:time")  # the entries as given
    # a formula whose columns are not told apart by their levels keeps the R names
    des = design(obs, VIGNETTE, random="~ 0 + time")
    assert des.random_levels == ["time"] and des.random_blocks == ["time"]


_SUPPORTED = r"supported: a grouping column"


@pytest.mark.parametrize(
    ("random", "match"),
    [
        (
            "(1 + time | donor_id)",
            r"term '\(1 \+ time \| donor_id\)': correlated random effects"
            r".*\(1 \+ time \|\| donor_id\)",
        ),
        ("(time | donor_id)", r"term '\(time \| donor_id\)': correlated"),
        ("(0 + time + libsize | donor_id)", r"term '\(0 \+ time \+ libsize \| donor_id\)': corr"),
        (
            "(0 + cell_type | donor_id)",
            r"term '\(0 \+ cell_type \| donor_id\)': a random slope needs one numeric variable "
            r"and 'cell_type' is categorical.*\(1 \| donor_id:cell_type\)",
        ),
        ("(1 | )", r"term '\(1 \| \)': empty grouping"),
        ("(1 | donor_id/)", r"term '\(1 \| donor_id/\)': empty grouping"),
        ("(1 | donor_id:)", r"term '\(1 \| donor_id:\)': empty grouping"),
        ("( | donor_id)", r"term '\( \| donor_id\)': empty left-hand side"),
        ("(0 | donor_id)", r"term '\(0 \| donor_id\)': no random effect"),
        (
            "(1 | donor_id) + condition",
            r"term 'condition' in '\(1 \| donor_id\) \+ condition': "
            r"not a random-effect term \(fixed effects belong in `fixed`",
        ),
        ("~ condition + (1 | donor_id)", r"term 'condition' in .*: not a random-effect term"),
        ("(1 | donor_id) - 1", r"term '- 1' in .*: not a random-effect term"),
        ("(1 | donor_id + batch)", r"the grouping 'donor_id \+ batch' is not a column"),
        ("(1 | donor_id * batch)", r"the grouping 'donor_id \* batch' is not a column"),
        ("(1 | donor_id", r"term '\(1 \| donor_id': unbalanced"),
        ("(1 ||| donor_id)", r"expected one '\|' \(or '\|\|'\)"),
        ("(1 | donor_id:donor_id)", r"repeats a column"),
        ("donor_id + batch", r"term 'donor_id \+ batch': not a column of obs"),
        ("", r"term '': empty term"),
    ],
)
def test_unsupported_random_terms_name_the_term(cells, random, match):
    with pytest.raises(ValueError, match=match) as err:
        design(cells, CELL_FIXED, random)
    assert not isinstance(err.value, KeyError) or "not in obs" in str(err.value)
    assert "supported:" in str(err.value)


def test_random_term_errors_for_data(cells):
    with pytest.raises(
        KeyError,
        match=r"random: column 'donr_id' used in random term "
        r"'\(1 \| donr_id\)' is not in obs; close matches: \['donor_id'\]",
    ):
        design(cells, CELL_FIXED, "(1 | donr_id)")
    with pytest.raises(
        ValueError,
        match=r"the block 'donor_id' is given twice \('donor_id' and "
        r"'\(1 \| donor_id\)'\)",
    ):
        design(cells, CELL_FIXED, ["donor_id", "(1 | donor_id)"])
    # a '|' in the fixed formula is a multi-part formula: named, not an AttributeError
    with pytest.raises(ValueError, match=r"fixed: formula .* contains '\|'.*go in random"):
        design(cells, "~ condition + (1 | donor_id)")
    with pytest.raises(ValueError, match=r"fixed: cannot evaluate formula '~ time.real'"):
        design(cells, "~ time.real")


def test_random_parsing_raises_only_value_type_or_key_errors():
    """Whatever the string, parsing ``random`` fails with a message, never a crash."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    obs = cell_table(np.random.default_rng(1), n=60, n_donors=4)
    pieces = st.sampled_from(
        ["(", ")", "|", "||", "~", "+", "-", "*", "/", ":", "0", "1", " ", "`", "donor_id",
         "batch", "time", "cell_type", "log(time)", "x", "(1|donor_id)", "(0 + time|batch)"]
    )  # fmt: skip

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(pieces, max_size=8).map("".join))
    def check(random):
        try:
            des = design(obs, "~ condition", random)
        except (ValueError, TypeError) as e:
            assert str(e)
        except KeyError as e:
            assert "not in obs" in str(e)
        else:
            assert des.Z.shape == (len(obs), des.d.sum())
            assert len(des.random_blocks) == len(des.d)
            assert len(des.random_levels) == len(des.random_names) == des.Z.shape[1]

    check()


@pytest.mark.parametrize(
    ("fixed", "random", "column", "kind", "hint"),
    [
        ("~ log(libsize) + condition", None, "log(libsize)", "-inf", "log of 0?"),
        ("~ condition + log(time - 5)", None, "log(time - 5)", "NaN", "log or sqrt of a negative"),
        ("~ condition + I(1 / (time - time))", None, "I(1 / (time - time))", "inf", "a division"),
        (CELL_FIXED, "(0 + log(libsize) | donor_id)", "log(libsize)", "-inf", "log of 0?"),
    ],
)
def test_nonfinite_covariate_is_named(cells, fixed, random, column, kind, hint):
    df = cells.copy()
    df.loc["cell_0003", "libsize"] = 0.0
    arg = "fixed" if random is None else "random"
    row = 3 if "libsize" in column else 0
    match = (
        rf"{arg}: column '{re.escape(column)}' of .* is {re.escape(kind)} at row {row} \(index "
        rf"label 'cell_000{row}'; {re.escape(hint)}"
    )
    with pytest.raises(ValueError, match=match):
        design(df, fixed, random)


def test_nonfinite_covariate_in_a_chunk_is_named(cells):
    des = design(cells, "~ log(libsize) + condition", "(1 | donor_id)")
    chunk = cells.iloc[10:20].copy()
    chunk.loc["cell_0015", "libsize"] = 0.0
    with pytest.raises(
        ValueError,
        match=r"'log\(libsize\)' .* -inf at row 5 \(index label "
        r"'cell_0015'; log of 0\?\)",
    ):
        des.apply(chunk)
    # a genuinely aliased column is still the rank check's
    with pytest.raises(ValueError, match=r"not of full column rank.*'I\(2 \* time\)'"):
        design(cells, "~ time + I(2 * time)")


def test_fixed_design_coded_in_row_blocks_is_the_same(monkeypatch):
    # X is materialised in blocks of rows (bounded memory); the spec is fixed first, so stateful
    # transforms (center), levels absent from a block and non-finite checks see the whole table
    from pyflashmm import _design

    rng = np.random.default_rng(8)
    n = 1000
    obs = pd.DataFrame({
        "donor_id": [f"D{i:02d}" for i in rng.integers(0, 12, n)],
        "cell_type": pd.Categorical(rng.choice(["CD4 T", "B cell", "NK"], n)),
        "condition": np.where(rng.random(n) < 0.5, "ctrl", "stim"),
        "libsize": rng.integers(500, 5000, n).astype(float),
        "age": rng.normal(50, 10, n),
    })  # fmt: skip
    obs.loc[obs.index[:400], "cell_type"] = "NK"  # the first blocks lack two cell types
    fixed = "~ log(libsize) + center(age) + cell_type * condition"
    whole = fm.design(obs, fixed, "(1|donor_id)")
    monkeypatch.setattr(_design, "_DENSE_ROWS", 128)
    blocks = fm.design(obs, fixed, "(1|donor_id)")
    assert np.array_equal(blocks.X, whole.X) and blocks.fixed_names == whole.fixed_names
    bad = obs.assign(libsize=obs.libsize.where(obs.index != 700, 0.0))
    with pytest.raises(ValueError, match="row 700"):
        fm.design(bad, fixed)
