"""Contrast matrices from strings, parsed by a small recursive-descent parser (never ``eval``).

A contrast is a linear combination cᵀβ of the fixed effects. ``contrast_matrix`` turns strings
such as ``"(cls1:trtB + cls2:trtB)/2"`` or ``"trtB - trtA"`` into the p × L matrix C whose column
l holds the coefficients of contrast l (FLASHMM's ``contrast.matrix``).

Grammar (whitespace is ignored)::

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/") unary)*
    unary  := ("+" | "-") unary | atom
    atom   := NUMBER | NAME | "(" expr ")"

Every value is a linear form Σ cⱼ βⱼ + constant. A product needs a number on one side, a divisor
must be a non-zero number, and the final expression must have no constant part and at least one
name: anything else (``"a*b"``, ``"a/b"``, ``"a + 1"``) is an error.

Names are matched greedily, longest first, against the known column names, so names may contain
``:``, ``[``, ``]``, ``.``, ``(``, ``)`` (``log(libsize)``, ``cls[1]:trt[T.B]``, ``(Intercept)``).
Both spellings of a column are accepted: R's (``cls1:trtB``) and formulaic's (``cls[1]:trt[T.B]``,
``Intercept``); a formulaic spelling is translated to R's when only R names are known. An unknown
name is a ``ValueError`` that lists the closest known names.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pyflashmm._checks import aliased_columns
from pyflashmm._design import r_spelling

__all__ = ["contrast_matrix"]

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT_CHAR = re.compile(r"[\w.]")
# formulaic-spelled name: pieces like cls[T.B], log(libsize) or x, joined by ':'
_PIECE = r"[A-Za-z_.][\w.]*(?:\([^()]*\))?(?:\[[^\]]*\])?"
_FORMULAIC = re.compile(rf"{_PIECE}(?::{_PIECE})*")
_WORD = re.compile(r"[^\s+\-*/]+")


def _aliases(names, formulaic) -> dict[str, int]:
    """Every accepted spelling → column index; spellings claimed by two columns are dropped."""
    table: dict[str, int] = {}
    clash: set[str] = set()

    def add(alias: str, j: int) -> None:
        if alias in table and table[alias] != j:
            clash.add(alias)
        table.setdefault(alias, j)

    for j, nm in enumerate(names):
        table[nm] = j
    spellings = list(names) + list(formulaic or [])
    for j, nm in enumerate(spellings):
        j = j % len(names)
        add(nm, j)
        add(r_spelling(nm), j)
    for alias in clash:
        if alias not in names:
            del table[alias]
    return table


class _Parser:
    def __init__(self, text: str, aliases: dict[str, int], p: int, label: str):
        self.text = text
        self.aliases = aliases
        self.p = p
        self.label = label
        self.tokens = self._tokenize()
        self.i = 0

    # ---- tokens: (kind, value, text): ("num", float, ·) | ("name", column index, ·)
    #      | ("op", char, ·) | ("end", None, "")
    def _error(self, msg: str) -> ValueError:
        where = (
            f"contrast {self.text!r}"
            if self.label == self.text
            else f"contrast {self.label!r} ({self.text!r})"
        )
        return ValueError(f"contrasts: {msg} in {where}")

    def _unknown(self, word: str) -> ValueError:
        known = list(self.aliases)
        close = difflib.get_close_matches(word, known, n=5, cutoff=0.4)
        hint = f"; close matches: {close}" if close else f"; known names: {known[:20]}"
        return self._error(f"unknown name {word!r}{hint}")

    def _match_name(self, pos: int):
        text = self.text
        best = None
        for alias in self._sorted_aliases:
            if text.startswith(alias, pos):
                end = pos + len(alias)
                if end < len(text) and (
                    text[end] in ":["
                    or (_IDENT_CHAR.match(text[end]) and _IDENT_CHAR.match(alias[-1]))
                ):
                    continue  # 'a' must not match the start of 'ab', nor 'a' of 'a:b'
                best = (alias, end)
                break
        m = _FORMULAIC.match(text, pos)
        if m and "[" in m.group(0):
            r = r_spelling(m.group(0))
            if r in self.aliases and (best is None or m.end() > best[1]):
                best = (r, m.end())
        return best

    def _tokenize(self):
        self._sorted_aliases = sorted(self.aliases, key=len, reverse=True)
        text, pos, out = self.text, 0, []
        while pos < len(text):
            c = text[pos]
            if c.isspace():
                pos += 1
                continue
            m = _NUMBER.match(text, pos)
            if m and not (m.end() < len(text) and _IDENT_CHAR.match(text[m.end()])):
                out.append(("num", float(m.group(0)), m.group(0)))
                pos = m.end()
                continue
            hit = self._match_name(pos)
            if hit is not None:
                out.append(("name", self.aliases[hit[0]], text[pos : hit[1]]))
                pos = hit[1]
                continue
            if c in "+-*/()":
                out.append(("op", c, c))
                pos += 1
                continue
            w = _WORD.match(text, pos)
            word = w.group(0) if w else c
            word = re.split(r"[()]", word)[0] or word
            raise self._unknown(word)
        out.append(("end", None, ""))
        return out

    # ---- values: (coefficient vector, constant, whether a name occurs in the sub-expression)
    def _peek(self):
        return self.tokens[self.i][:2]

    def _take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok[:2]

    def _unexpected(self) -> ValueError:
        kind, _, text = self.tokens[self.i]
        what = {"name": "name", "num": "number", "op": "symbol"}.get(kind, "")
        return self._error(f"unexpected {what} {text!r}".replace("  ", " "))

    def parse(self) -> np.ndarray:
        if self._peek()[0] == "end":
            raise self._error("empty expression")
        vec, const, named = self._expr()
        if self._peek()[0] != "end":
            raise self._unexpected()
        if not named:
            raise self._error("no coefficient name")
        if const != 0:
            raise self._error(f"constant term {const:g} (a contrast is linear in the coefficients)")
        return vec

    def _expr(self):
        vec, const, named = self._term()
        while self._peek() in (("op", "+"), ("op", "-")):
            sign = 1.0 if self._take()[1] == "+" else -1.0
            v2, c2, n2 = self._term()
            vec, const, named = vec + sign * v2, const + sign * c2, named or n2
        return vec, const, named

    def _term(self):
        vec, const, named = self._unary()
        while self._peek() in (("op", "*"), ("op", "/")):
            op = self._take()[1]
            v2, c2, n2 = self._unary()
            if op == "*":
                if named and n2:
                    raise self._error("product of coefficient names (not linear)")
                if n2:
                    vec, const, named = v2 * const, c2 * const, True
                else:
                    vec, const = vec * c2, const * c2
            else:
                if n2:
                    raise self._error("division by a coefficient name (not linear)")
                if c2 == 0:
                    raise self._error("division by zero")
                vec, const = vec / c2, const / c2
        return vec, const, named

    def _unary(self):
        kind, val = self._peek()
        if (kind, val) in (("op", "+"), ("op", "-")):
            self._take()
            vec, const, named = self._unary()
            return (vec, const, named) if val == "+" else (-vec, -const, named)
        return self._atom()

    def _atom(self):
        kind, val = self._peek()
        if kind == "end":
            raise self._error("unexpected end of expression")
        if (kind, val) == ("op", ")") or (kind == "op" and val in "*/"):
            raise self._unexpected()
        self._take()
        if kind == "num":
            return np.zeros(self.p), val, False
        if kind == "name":
            vec = np.zeros(self.p)
            vec[val] = 1.0
            return vec, 0.0, True
        if (kind, val) == ("op", "("):
            out = self._expr()
            if self._peek() != ("op", ")"):
                if self._peek()[0] == "end":
                    raise self._error("missing ')'")
                raise self._unexpected()
            self._take()
            return out
        raise AssertionError(kind)  # pragma: no cover


def _names_of(names) -> tuple[list[str], list[str] | None]:
    fixed = getattr(names, "fixed_names", None)
    if fixed is not None:  # a Design (or anything carrying both spellings)
        return [str(x) for x in fixed], getattr(names, "formulaic_names", None)
    if isinstance(names, pd.DataFrame):
        return [str(x) for x in names.columns], None
    if isinstance(names, str) or not isinstance(names, Sequence | pd.Index | np.ndarray):
        raise TypeError(
            "names must be a sequence of coefficient names (or a Design); "
            f"got {type(names).__name__}"
        )
    out = [str(x) for x in names]
    if not out:
        raise ValueError("names is empty")
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise ValueError(f"names has duplicates: {dup}")
    return out, None


def contrast_matrix(contrasts, names) -> pd.DataFrame:
    """Contrast matrix (p × L) from contrast strings.

    Parameters
    ----------
    contrasts : str, sequence of str or mapping of str to str
        The contrasts: ``{"BvsA": "(cls1:trtB + cls2:trtB)/2"}``, a list of expressions (each
        expression names its column) or a single expression. Expressions are sums and
        differences of coefficient names with numeric factors, divisions by numbers and
        parentheses (grammar in the module docstring).
    names : sequence of str or Design
        The coefficient names, in the order of the coefficients (e.g. ``design.fixed_names``, the
        columns of X). A :class:`~pyflashmm.Design` supplies both spellings; with a plain
        sequence, formulaic spellings in ``contrasts`` are translated to R's.

    Returns
    -------
    pandas.DataFrame
        p × L float64; index = ``names``, columns = the contrast names.

    Raises
    ------
    ValueError
        Unknown names (closest known names listed), syntax errors, non-linear expressions
        (products of names, division by a name), constant terms, duplicate contrast names.
    TypeError
        ``contrasts`` or ``names`` of the wrong type.

    Examples
    --------
    >>> contrast_matrix({"BvsA": "trtB - trtA"}, ["trtA", "trtB"])
          BvsA
    trtA  -1.0
    trtB   1.0
    """
    cols, formulaic = _names_of(names)
    if formulaic is not None and len(formulaic) != len(cols):
        formulaic = None
    if isinstance(contrasts, str):
        items = [(contrasts, contrasts)]
    elif isinstance(contrasts, Mapping):
        items = [(str(k), v) for k, v in contrasts.items()]
    elif isinstance(contrasts, Sequence):
        items = [(v, v) for v in contrasts]
    else:
        raise TypeError(
            "contrasts must be a string, a list of strings or a dict name -> string; "
            f"got {type(contrasts).__name__}"
        )
    if not items:
        raise ValueError("contrasts is empty")
    labels = [k for k, _ in items]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"contrasts has duplicate names: {dup}")
    aliases = _aliases(cols, formulaic)
    mat = np.zeros((len(cols), len(items)))
    for l, (label, expr) in enumerate(items):
        if not isinstance(expr, str):
            raise TypeError(f"contrasts[{label!r}] must be a string; got {type(expr).__name__}")
        vec = _Parser(expr, aliases, len(cols), label).parse()
        if not np.all(np.isfinite(vec)) or not math.isfinite(float(np.abs(vec).sum())):
            raise ValueError(f"contrasts: contrast {label!r} has non-finite coefficients")
        mat[:, l] = vec + 0.0  # no negative zeros
    return pd.DataFrame(mat, index=pd.Index(cols), columns=pd.Index(labels))


def as_contrasts(names, contrast, index=None) -> dict[str, np.ndarray]:
    """Normalise ``contrast``/``index`` to {name: p × r matrix} over the coefficients ``names``,
    every matrix finite, non-zero and of full column rank (a joint hypothesis whose rows are
    linearly dependent is an error), for both model families."""
    out = _as_contrast_matrices(names, contrast, index)
    for name, L in out.items():
        if not np.isfinite(L).all():
            raise ValueError(f"contrast {name!r} has non-finite coefficients")
        if L.shape[1] == 0 or not L.any():
            raise ValueError(f"contrast {name!r} is zero")
        if aliased_columns(L.T @ L):
            raise ValueError(f"contrast {name!r}: its {L.shape[1]} rows are linearly dependent")
    return out


def _as_contrast_matrices(names, contrast, index) -> dict[str, np.ndarray]:
    """{name: p × r matrix} of ``contrast``/``index`` over the coefficients ``names``."""
    names = list(names)
    p = len(names)
    if contrast is None:
        if index is None:
            index = list(range(p))
        idx = [index] if isinstance(index, str | int | np.integer) else list(index)
        out = {}
        for i in idx:
            j = names.index(i) if isinstance(i, str) and i in names else i
            if isinstance(j, str) or not 0 <= int(j) < p:
                close = _close(str(i), names)
                raise ValueError(f"index: unknown coefficient {i!r}{close}")
            e = np.zeros((p, 1))
            e[int(j), 0] = 1.0
            out[names[int(j)]] = e
        return out
    if index is not None:
        raise TypeError("pass either contrast or index, not both")
    if isinstance(contrast, Mapping | list | tuple | str) and len(contrast) == 0:
        raise ValueError(
            "contrast is empty: give at least one contrast, or None to test every coefficient"
        )
    if isinstance(contrast, pd.DataFrame):
        mat = contrast.reindex(names)
        if mat.isna().any().any():
            missing = [n for n in names if n not in contrast.index]
            raise ValueError(f"contrast: rows missing for coefficients {missing}")
        return {str(c): mat[[c]].to_numpy(dtype=np.float64) for c in mat.columns}
    if isinstance(contrast, np.ndarray):
        arr = np.asarray(contrast, dtype=np.float64)
        arr = arr[:, None] if arr.ndim == 1 else arr
        if arr.shape[0] != p:
            raise ValueError(f"contrast has {arr.shape[0]} rows but the fit has p = {p}")
        return {f"c{j}": arr[:, [j]] for j in range(arr.shape[1])}
    if isinstance(contrast, str):
        contrast = {contrast: contrast}
    elif isinstance(contrast, list | tuple):
        contrast = {str(c): c for c in contrast}
    if not isinstance(contrast, Mapping):
        raise TypeError(
            "contrast must be a dict, str, list of str, ndarray or DataFrame; "
            f"got {type(contrast).__name__}"
        )
    out = {}
    for key, value in contrast.items():
        if isinstance(value, str) or (
            isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        ):
            exprs = [value] if isinstance(value, str) else list(value)  # a list: a joint test
            out[str(key)] = _parse(exprs, names, str(key))
        else:
            arr = np.asarray(value, dtype=np.float64)
            arr = arr[:, None] if arr.ndim == 1 else arr
            if arr.ndim != 2 or arr.shape[0] != p:
                raise ValueError(f"contrast {key!r} must have p = {p} rows; got {arr.shape}")
            out[str(key)] = arr
    return out


def _parse(expressions: list[str], names: list[str], label: str) -> np.ndarray:
    """p × r matrix of the expressions (r > 1: the rows of one joint hypothesis)."""
    if len(expressions) == 1:
        return contrast_matrix({label: expressions[0]}, names).to_numpy(dtype=np.float64)
    try:
        return contrast_matrix(expressions, names).to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"joint contrast {label!r}: {exc}") from None


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f"; close matches: {close}" if close else ""
