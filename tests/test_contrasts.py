"""contrast_matrix(): the safe parser, both spellings of names, linearity and error messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pyflashmm as fm
from pyflashmm._contrasts import contrast_matrix

R_NAMES = ["log(libsize)", "cls1", "cls10", "cls2", "cls1:trtB", "cls10:trtB", "cls2:trtB"]
F_NAMES = [
    "log(libsize)",
    "cls[1]",
    "cls[10]",
    "cls[2]",
    "cls[1]:trt[T.B]",
    "cls[10]:trt[T.B]",
    "cls[2]:trt[T.B]",
]


def _col(cm: pd.DataFrame, j: int = 0) -> dict[str, float]:
    return {k: v for k, v in cm.iloc[:, j].items() if v != 0}


def test_flashmm_vignette_contrast():
    cm = contrast_matrix({"BvsA": "(cls1:trtB + cls2:trtB)/2"}, R_NAMES)
    assert list(cm.index) == R_NAMES and list(cm.columns) == ["BvsA"]
    assert cm.shape == (7, 1) and cm.dtypes.iloc[0] == np.float64
    assert _col(cm) == {"cls1:trtB": 0.5, "cls2:trtB": 0.5}


def test_difference_and_list_and_single_string():
    names = ["(Intercept)", "trtA", "trtB"]
    cm = contrast_matrix(["trtB - trtA", "trtA"], names)
    assert list(cm.columns) == ["trtB - trtA", "trtA"]
    np.testing.assert_array_equal(cm.to_numpy(), [[0, 0], [-1, 1], [1, 0]])
    cm1 = contrast_matrix("trtB - trtA", names)
    pd.testing.assert_frame_equal(cm1, cm.iloc[:, :1])


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("(cls1 + cls2)/2 - cls10", {"cls1": 0.5, "cls2": 0.5, "cls10": -1.0}),
        ("0.5*cls1 - 0.5*cls2", {"cls1": 0.5, "cls2": -0.5}),
        ("-cls1", {"cls1": -1.0}),
        ("- - cls1", {"cls1": 1.0}),
        ("+cls1", {"cls1": 1.0}),
        ("cls1*3/4", {"cls1": 0.75}),
        ("2*(cls1 - (cls2 + cls10)/2)", {"cls1": 2.0, "cls2": -1.0, "cls10": -1.0}),
        ("1e-1 * cls1 + .5*cls2 + 2.*cls10", {"cls1": 0.1, "cls2": 0.5, "cls10": 2.0}),
        ("cls1 - cls1 + cls2", {"cls2": 1.0}),
        ("log(libsize)", {"log(libsize)": 1.0}),
        ("2*log(libsize)/4", {"log(libsize)": 0.5}),
        # longest match: cls10:trtB is one name, not cls1 followed by junk
        ("cls10:trtB-cls10", {"cls10:trtB": 1.0, "cls10": -1.0}),
        ("cls1:trtB+cls10", {"cls1:trtB": 1.0, "cls10": 1.0}),
        ("(cls1:trtB)", {"cls1:trtB": 1.0}),
    ],
)
def test_grammar(expr, expected):
    assert _col(contrast_matrix(expr, R_NAMES)) == pytest.approx(expected)


def test_formulaic_spelling_with_r_names():
    cm = contrast_matrix({"c": "(cls[1]:trt[T.B] + cls[2]:trt[T.B])/2 - cls[10]"}, R_NAMES)
    assert _col(cm) == {"cls1:trtB": 0.5, "cls2:trtB": 0.5, "cls10": -1.0}


def test_r_spelling_with_formulaic_names():
    cm = contrast_matrix("cls1:trtB - cls[2]:trt[T.B]", F_NAMES)
    assert list(cm.index) == F_NAMES
    assert _col(cm) == {"cls[1]:trt[T.B]": 1.0, "cls[2]:trt[T.B]": -1.0}
    cm = contrast_matrix("(Intercept) + trtB", ["Intercept", "trt[T.B]"])
    assert _col(cm) == {"Intercept": 1.0, "trt[T.B]": 1.0}


def test_names_from_a_design():
    obs = pd.DataFrame(
        {
            "cls": ["1", "2", "10", "1", "2", "10", "1", "2"],
            "trt": ["A", "A", "A", "B", "B", "B", "B", "A"],
            "libsize": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 8.0],
        }
    )
    des = fm.design(obs, "~ 0 + log(libsize) + cls + cls:trt")
    cm = fm.contrast_matrix({"a": "cls[1]:trt[T.B] - cls2:trtB"}, des)
    assert list(cm.index) == des.fixed_names == R_NAMES
    assert _col(cm) == {"cls1:trtB": 1.0, "cls2:trtB": -1.0}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("cls1*cls2", "product of coefficient names"),
        ("(cls1 + 1)*cls2", "product of coefficient names"),
        ("cls1/cls2", "division by a coefficient name"),
        ("2/cls2", "division by a coefficient name"),
        ("cls1/0", "division by zero"),
        ("cls1 + 1", "constant term 1"),
        ("2", "no coefficient name"),
        ("", "empty expression"),
        ("(cls1", r"missing '\)'"),
        ("cls1)", r"unexpected symbol '\)'"),
        ("cls1 cls2", "unexpected name 'cls2'"),
        ("cls1 +", "unexpected end"),
        ("* cls1", r"unexpected symbol '\*'"),
        ("cls1 ** 2", r"unexpected symbol '\*'"),
    ],
)
def test_syntax_and_linearity_errors(expr, message):
    with pytest.raises(ValueError, match=message):
        contrast_matrix(expr, R_NAMES)


def test_unknown_name_lists_close_matches():
    with pytest.raises(
        ValueError, match=r"unknown name 'cls3:trtB'; close matches: \[.*'cls2:trtB'"
    ):
        contrast_matrix({"x": "cls3:trtB - cls1"}, R_NAMES)
    with pytest.raises(ValueError, match=r"unknown name 'trtb'.*close matches: \['trtB'"):
        contrast_matrix("trtb", ["trtA", "trtB"])
    # a prefix of a name followed by more identifier characters is not that name
    with pytest.raises(ValueError, match=r"unknown name 'cls1x'"):
        contrast_matrix("cls1x", R_NAMES)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "open('x')",
        "cls1.__class__",
        "[cls1]",
        "cls1; cls2",
        "lambda: 0",
    ],
)
def test_no_eval(expr):
    with pytest.raises(ValueError, match="contrasts: "):
        contrast_matrix(expr, R_NAMES)


def test_argument_errors():
    with pytest.raises(TypeError, match="contrasts must be"):
        contrast_matrix(3, R_NAMES)
    with pytest.raises(TypeError, match=r"contrasts\['a'\] must be a string"):
        contrast_matrix({"a": 1}, R_NAMES)
    with pytest.raises(ValueError, match="contrasts is empty"):
        contrast_matrix([], R_NAMES)
    with pytest.raises(ValueError, match="duplicate names"):
        contrast_matrix(["cls1", "cls1"], R_NAMES)
    with pytest.raises(TypeError, match="names must be"):
        contrast_matrix("cls1", "cls1")
    with pytest.raises(ValueError, match=r"names has duplicates: \['a'\]"):
        contrast_matrix("a", ["a", "a"])
