"""Design matrices of a linear mixed model from a cell table and R-style formulas.

Model (notation of :func:`pyflashmm.summary_stats`)::

    y = X β + Z b + ε,   b = (b_1, …, b_K),  b_k ~ N(0, θ_k I_{d_k}),  ε ~ N(0, σ² I_n)

``X`` (n × p) comes from the fixed-effects formula, ``Z`` (n × q, sparse) is the horizontal
concatenation of one block per entry of ``random``, and ``d`` holds the block widths
(``d.sum() == q``).

Fixed effects
-------------
``fixed`` is a one-sided formula parsed by formulaic (e.g. ``"~ 0 + log(libsize) + cls +
cls:trt"``, the FLASHMM vignette). Coding and column order are those of R's ``model.matrix``:
treatment contrasts with the first level as reference; terms ordered by degree; inside an
interaction, the variables are taken in the order of their first appearance in the formula and the
first one varies fastest (R names ``trt + cls:trt``'s interaction ``trtA:cls10``, not
``cls10:trtA``).

Levels of a character/object column are its distinct values sorted by code point, which is R's
order under ``LC_COLLATE=C`` (R 4.2 under ``en_US.UTF-8`` or ``C.UTF-8`` sorts case-insensitively,
``"a" < "B"``; use a pandas Categorical to impose any order). The levels of a pandas Categorical
are its categories, in order, as for an R factor. Integer and float columns are numeric.
Boolean columns are factors with levels ``False < True`` (R's ``flagTRUE``).

Column names come in two spellings:

* ``fixed_names``: R's ``model.matrix`` names — variable name pasted to the level
  (``cls1``, ``cls1:trtB``, ``log(libsize)``, ``(Intercept)``);
* ``formulaic_names``: formulaic's names (``cls[1]``, ``cls[1]:trt[T.B]``, ``Intercept``).

Random effects
--------------
``random`` is ``None``, one entry or a list of entries; each entry makes one or more blocks of Z
(one variance component each). Two syntaxes:

Grouping columns and formulas (one block per entry):

* ``"donor_id"`` — a grouping column: one indicator column per level (R's ``model.matrix(~ 0 +
  as.factor(donor_id))``). Names ``donor_idD01`` (column name pasted to the level, as R).
* ``"donor_id:cell_type"`` — the interaction of grouping columns (nested factors): one indicator
  per combination *present in the data* (lme4's ``(1 | donor_id:cell_type)``), first column
  varying fastest, as R's ``model.matrix(~ 0 + donor_id:cell_type)`` without its all-zero
  columns. Names ``donor_idD01:cell_typeB cell``. Crossed factors are two entries,
  ``["donor_id", "batch"]``.
* ``"~ 0 + donor_id:time"`` — a one-sided formula: its model matrix (coded as for ``fixed``) is
  one block, e.g. an uncorrelated random slope of ``time`` per donor. Names as ``fixed_names``
  (``donor_idD01:time``). A random formula with an intercept is an error (``~ donor_id`` would
  put a column of ones in Z; write ``~ 0 + donor_id``).

lme4 terms (one block per grouping and effect); ``+`` joins terms, a leading ``~`` and spaces
anywhere are optional, and nlme's ``"~ 1 | donor_id"`` is ``(1 | donor_id)``:

* ``(1 | donor_id)`` — the block of ``"donor_id"``; ``(1 | donor_id:cell_type)`` that of
  ``"donor_id:cell_type"``; ``(1 | donor_id) + (1 | batch)`` two crossed blocks;
* ``(1 | donor_id/cell_type)`` — nesting, expanded as lme4 does to ``(1 | donor_id) +
  (1 | donor_id:cell_type)``;
* ``(0 + time | donor_id)`` — a random slope of the numeric ``time`` per donor, uncorrelated with
  anything: the block of ``"~ 0 + donor_id:time"`` (same columns and names), built over the
  observed levels of the grouping;
* ``(1 + time || donor_id)`` — lme4's double bar: an intercept block and a slope block, each with
  its own variance and no correlation (``(1 | donor_id) + (0 + time | donor_id)``).

Not supported (a ValueError names the term): correlated effects, ``(1 + time | donor_id)``,
``(time | donor_id)`` or ``(0 + time + dose | donor_id)`` (one variance per block is all the
summary-statistics fit estimates; use ``||``); a categorical slope ``(0 + cell_type | donor_id)``
(lme4 gives the cell types a correlation matrix; ``(1 | donor_id:cell_type)`` is the
one-variance version); a fixed-effect term inside ``random``.

Every block has a label (``Design.random_blocks``, used for the variance components
``LmmFit.theta_names`` and to group the BLUPs of :func:`random_effects`): the grouping for an
intercept (``"donor_id"``, ``"donor_id:cell_type"``), the grouping and the slope variable for a
slope (``"donor_id:time"``, as the equivalent formula ``"~ 0 + donor_id:time"``), the formula's
terms for a formula (``"~ 0 + a:x"`` → ``"a:x"``). Every column of Z has a level label
(``Design.random_levels``): the level of the grouping (``"D01"``, ``"D01:CD4 T"``); for a formula
column, the levels of its categorical variables (``"D01"`` for ``donor_idD01:time``), or its R
name when that does not identify the column within its block.

Chunks
------
``Design.spec`` (:class:`DesignSpec`) stores the levels and codings learned from the full table;
``design.apply(obs_chunk)`` rebuilds X and Z for any subset of cells with identical columns (a
chunk holding a single level still yields every column). This is what chunked or distributed
summary statistics need.

Errors
------
Unknown columns (``KeyError`` listing close matches), NaN in a used column (``ValueError`` naming
the column and the first row), unused categories of a Categorical in use (``ValueError`` naming
them: R would keep them as all-zero, aliased columns), values that are not finite once the
formula is applied (``log(libsize)`` of a 0: a ``ValueError`` naming the column, the value and the
first row, rather than a misleading rank error), aliased fixed columns (``ValueError`` naming
them), random terms that are not supported (``ValueError`` naming the term and listing the
supported forms) and, in :meth:`DesignSpec.apply`, levels not seen when the design was built.
"""

from __future__ import annotations

import difflib
import itertools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm import _checks

__all__ = ["Design", "DesignSpec", "design"]


# --------------------------------------------------------------------------------------------
# column checks shared by fixed and random specs
# --------------------------------------------------------------------------------------------


def _check_obs(obs) -> pd.DataFrame:
    if not isinstance(obs, pd.DataFrame):
        raise TypeError(f"obs must be a pandas DataFrame; got {type(obs).__name__}")
    return obs


def check_columns_exist(obs: pd.DataFrame, columns, arg: str, what: str) -> None:
    known = [str(c) for c in obs.columns]
    for col in columns:
        if col not in obs.columns:
            close = difflib.get_close_matches(str(col), known, n=3, cutoff=0.5)
            hint = f"; close matches: {close}" if close else f"; obs has columns {known[:20]}"
            raise _checks.MissingColumnError(
                f"{arg}: column {col!r} used in {what} is not in obs{hint}"
            )


def check_no_nan(obs: pd.DataFrame, columns, arg: str) -> None:
    for col in columns:
        na = obs[col].isna().to_numpy()
        if na.any():
            i = int(np.flatnonzero(na)[0])
            raise ValueError(
                f"{arg}: column {col!r} has missing values (NaN/None); first at row {i} "
                f"(index label {obs.index[i]!r})"
            )


def _check_no_empty_categories(obs: pd.DataFrame, columns, arg: str) -> None:
    for col in columns:
        s = obs[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            counts = np.bincount(
                s.cat.codes.to_numpy()[s.cat.codes.to_numpy() >= 0], minlength=len(s.cat.categories)
            )
            empty = [s.cat.categories[j] for j in np.flatnonzero(counts == 0)]
            if empty:
                raise ValueError(
                    f"{arg}: categorical column {col!r} has levels with no cells: {empty}; "
                    f"drop them first (obs[{col!r}].cat.remove_unused_categories())"
                )


def _check_known_levels(chunk: pd.DataFrame, col: str, levels, arg: str) -> None:
    s = chunk[col]
    unseen = pd.Index(pd.unique(s.to_numpy())).difference(pd.Index(list(levels)))
    if len(unseen):
        raise ValueError(
            f"{arg}: column {col!r} of the chunk has levels not present when the design was "
            f"built: {list(unseen)[:10]}"
        )


def _logical_as_factor(frame: pd.DataFrame) -> pd.DataFrame:
    """Boolean columns (NumPy's or pandas' nullable ``boolean``) become categoricals (levels
    False < True present), as R codes logicals; pandas' ``string`` columns become plain object
    columns, as character vectors (formulaic would read them as numbers)."""
    bools = [c for c in frame.columns if pd.api.types.is_bool_dtype(frame[c].dtype)]
    strings = [c for c in frame.columns if isinstance(frame[c].dtype, pd.StringDtype)]
    if not bools and not strings:
        return frame
    frame = frame.copy()
    for c in bools:
        values = frame[c].to_numpy(dtype=bool)
        present = sorted(pd.unique(values).tolist())
        frame[c] = pd.Categorical(values, categories=present)
    for c in strings:
        frame[c] = frame[c].astype(object)
    return frame


def level_label(v) -> str:
    """A level as R pastes it into a column name: TRUE/FALSE, 2 for 2.0, else str."""
    if isinstance(v, (bool, np.bool_)):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


# --------------------------------------------------------------------------------------------
# formula blocks (fixed effects, random formulas)
# --------------------------------------------------------------------------------------------


def _parse_formula(formula: str, arg: str):
    from formulaic import Formula
    from formulaic.errors import FormulaicError

    if not isinstance(formula, str):
        raise TypeError(f"{arg} must be a formula string such as '~ 0 + cls'; got {formula!r}")
    text = formula.strip()
    if not text.startswith("~"):
        raise ValueError(f"{arg} must be a one-sided formula starting with '~'; got {formula!r}")
    if _has_random_bar(text):  # formulaic would read a multi-part formula, or fail
        raise ValueError(
            f"{arg}: formula {formula!r} contains '|': random-effect terms such as "
            "'(1 | donor_id)' go in random"
        )
    try:
        f = Formula(text)
        f_written = Formula(text, _ordering="none")
    except (FormulaicError, ValueError, TypeError) as e:  # formulaic's messages carry colours
        msg = re.sub(r"\x1b\[[0-9;]*m|[⧛⧚]", "", str(e)).strip()
        raise ValueError(f"{arg}: cannot parse formula {formula!r}: {msg}") from None
    if not hasattr(f, "required_variables"):  # pragma: no cover - a multi-part formula
        raise ValueError(f"{arg}: formula {formula!r} has several parts")
    return f, f_written


_NAME = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_.]*)")


def formula_columns(formula: str, obs: pd.DataFrame, arg: str = "fixed") -> list[str]:
    """The columns of ``obs`` that ``formula`` uses.

    formulaic's ``required_variables`` leaves out names it also knows as functions (``center``,
    ``scale``, ``C``, ``log``, …); an obs column of that name is data here, as in R, where
    the column wins over the function of the same name.
    """
    f, _ = _parse_formula(formula, arg)
    used = set(f.required_variables)
    for m in _NAME.finditer(formula):
        name = m.group(1) or m.group(2)
        called = formula[m.end() :].lstrip().startswith("(")  # log(x): the function
        if name in obs.columns and not called:
            used.add(name)
    return sorted(used)


def _has_random_bar(text: str) -> bool:
    """A '|' at the top level or in plain parentheses (``~ x | g``, ``~ x + (1 | g)``), not in
    a function call (``~ I(a | b)``)."""
    stack: list[bool] = []  # per open parenthesis: is it a call?
    prev = ""
    for ch in text:
        if ch == "(":
            stack.append(prev.isalnum() or prev in "_.)")
        elif ch == ")" and stack:
            stack.pop()
        elif ch == "|" and not any(stack):
            return True
        if not ch.isspace():
            prev = ch
    return False


def _formula_label(f_written) -> str:
    """A formula's terms as written, without the intercept: ``"~ 0 + a:x"`` → ``"a:x"``."""
    return " + ".join(str(t) for t in f_written if str(t) != "1")


def _variable_order(f_written) -> dict[str, int]:
    """Rank of each factor by first appearance in the formula as written (R's variable order)."""
    rank: dict[str, int] = {}
    for term in f_written:
        for fac in term.factors:
            key = str(fac)
            if key not in rank and key != "1":
                rank[key] = len(rank)
    return rank


def r_spelling(name: str) -> str:
    """R's ``model.matrix`` spelling of a formulaic column name (``cls[T.b]`` → ``clsb``)."""
    if name == "Intercept":
        return "(Intercept)"
    parts = []
    for part in name.split(":"):
        m = re.fullmatch(r"(.*)\[(?:T\.)?(.*)\]", part)
        parts.append(m.group(1) + m.group(2) if m else part)
    return ":".join(parts)


def _term_layout(structure, encoder_state, rank):
    """Permutation (formulaic → R order), R names and level labels (the levels of the categorical
    variables, ``""`` for a numeric-only column) of the columns of one encoded term."""
    f_names: list[str] = []
    r_names: list[str] = []
    levels_out: list[str] = []
    perm: list[int] = []
    offset = 0
    for st in structure.scoped_terms:
        factors = list(st.factors)
        if not factors:  # the intercept
            f_names.append("Intercept")
            r_names.append("(Intercept)")
            levels_out.append("")
            perm.append(offset)
            offset += 1
            continue
        labels_f, labels_r, labels_l = [], [], []
        for sf in factors:
            key = str(sf.factor)
            kind, state = encoder_state.get(key, (None, {}))
            if getattr(kind, "value", None) == "categorical":
                levels = list(state["categories"])
                if sf.reduced:
                    levels = levels[1:]
                    labels_f.append([f"{key}[T.{lv}]" for lv in levels])
                else:
                    labels_f.append([f"{key}[{lv}]" for lv in levels])
                labels_r.append([f"{key}{level_label(lv)}" for lv in levels])
                labels_l.append([level_label(lv) for lv in levels])
            else:
                labels_f.append([key])
                labels_r.append([key])
                labels_l.append([""])
        # formulaic: first factor varies fastest
        f_lab = [
            tuple(reversed(t))
            for t in itertools.product(*reversed([range(len(lab)) for lab in labels_f]))
        ]
        n_cols = len(f_lab)
        expected = [":".join(labels_f[j][i] for j, i in enumerate(t)) for t in f_lab]
        actual = list(structure.columns[offset : offset + n_cols])
        if expected != actual:  # unusual encoding (multi-column transforms, custom contrasts)
            actual = list(structure.columns[offset:])
            f_names.extend(actual)
            r_names.extend(r_spelling(c) for c in actual)
            levels_out.extend(r_spelling(c) for c in actual)
            perm.extend(range(offset, offset + len(actual)))
            offset += len(actual)
            break
        pos = {t: offset + k for k, t in enumerate(f_lab)}
        order = sorted(range(len(factors)), key=lambda j: rank.get(str(factors[j].factor), 1e9))
        # R: variables in order of first appearance, first one varies fastest
        r_ranges = [range(len(labels_f[j])) for j in order]
        for t_r in itertools.product(*reversed(r_ranges)):
            t_r = tuple(reversed(t_r))
            t_f = [0] * len(factors)
            for jj, j in enumerate(order):
                t_f[j] = t_r[jj]
            k = pos[tuple(t_f)]
            perm.append(k)
            f_names.append(structure.columns[k])
            r_names.append(":".join(labels_r[j][t_f[j]] for j in order))
            levels_out.append(":".join(lv for j in order if (lv := labels_l[j][t_f[j]])))
        offset += n_cols
    return perm, f_names, r_names, levels_out


_NONFINITE_HINTS = {
    "-inf": "log of 0?",
    "inf": "a division by 0 or an overflow?",
    "NaN": "log or sqrt of a negative number, 0/0, or 0 × inf in an interaction?",
}


#: rows of the fixed-effects design materialised at a time (the model spec is fixed, so a block
#: of rows is coded as in the whole; 500,000 cells × 59 columns peaked at 0.73 GB over X's
#: 0.24 GB when coded at once)
_DENSE_ROWS = 65_536


def _check_finite_values(M, obs: pd.DataFrame, names, arg: str, where: str) -> None:
    """ValueError naming the column, the value (-inf/inf/NaN) and the first cell of a design
    matrix that is not finite (e.g. ``log(libsize)`` of a 0), before it reaches the rank check,
    which would otherwise report the column as aliased."""
    if sp.issparse(M):
        if np.isfinite(M.data).all():
            return
        coo = M.tocoo()
        bad = ~np.isfinite(coo.data)
        rows, cols, vals = coo.row[bad], coo.col[bad], coo.data[bad]
        first = np.lexsort((cols, rows))[0]
        i, j, v = int(rows[first]), int(cols[first]), float(vals[first])
    else:
        finite = np.isfinite(M)
        if finite.all():
            return
        i, j = (int(k) for k in np.argwhere(~finite)[0])  # row-major: first row, then column
        v = float(M[i, j])
    kind = "NaN" if np.isnan(v) else ("-inf" if v < 0 else "inf")
    raise ValueError(
        f"{arg}: column {names[j]!r} of {where} is {kind} at row {i} (index label "
        f"{obs.index[i]!r}; {_NONFINITE_HINTS[kind]}); transform the variable so that it is "
        "finite (e.g. log(x + 1)) or drop those cells"
    )


@dataclass(frozen=True, eq=False)
class _FormulaBlock:
    """A formula compiled on the full cell table: formulaic ModelSpec plus R column order."""

    formula: str
    arg: str
    model_spec: object
    columns: tuple[str, ...]  # obs columns used
    categorical_levels: dict  # obs column -> levels, for chunk checks
    perm: np.ndarray  # R column j = formulaic column perm[j]
    r_names: tuple[str, ...]
    f_names: tuple[str, ...]
    has_intercept: bool
    label: str  # the terms as written, without the intercept ("donor_id:time")
    levels: tuple[str, ...]  # level label of each column (see the module docstring)
    where: str  # what the messages call it ("formula '~ 0 + x'", "random term '(0 + x | g)'")

    @classmethod
    def build(cls, obs: pd.DataFrame, formula: str, arg: str, where: str = "") -> _FormulaBlock:
        from formulaic.errors import FormulaicError

        where = where or f"formula {formula!r}"
        f, f_written = _parse_formula(formula, arg)
        columns = formula_columns(formula, obs, arg)
        check_columns_exist(obs, columns, arg, where)
        check_no_nan(obs, columns, arg)
        _check_no_empty_categories(obs, columns, arg)
        try:
            # NaN in the used columns is reported above and values the formula makes non-finite
            # (NaN included: "raise" would not say where) by matrix(), with their row
            with np.errstate(all="ignore"):
                mm = f.get_model_matrix(_logical_as_factor(obs[columns]), na_action="ignore")
        except FormulaicError as e:  # e.g. an unknown function: not a crash deep in formulaic
            msg = re.sub(r"\x1b\[[0-9;]*m|[⧛⧚]", "", str(e)).strip()
            raise ValueError(f"{arg}: cannot evaluate {where}: {msg}") from None
        spec = mm.model_spec
        rank = _variable_order(f_written)
        perm, f_names, r_names, lv_names = [], [], [], []
        offset = 0
        for structure in spec.structure:
            p, fn, rn, lv = _term_layout(structure, spec.encoder_state, rank)
            perm.extend(offset + k for k in p)
            f_names.extend(fn)
            r_names.extend(rn)
            lv_names.extend(lv)
            offset += len(structure.columns)
        perm_arr = np.asarray(perm, dtype=np.int64)
        if sorted(perm_arr.tolist()) != list(range(mm.shape[1])):  # pragma: no cover - guard
            raise RuntimeError(f"internal error: column layout of {formula!r} not understood")
        levels = {}
        for key, (kind, state) in spec.encoder_state.items():
            if getattr(kind, "value", None) == "categorical" and key in obs.columns:
                levels[key] = list(state["categories"])
        # a column's level label must identify it within the block; otherwise the R names do
        if "" in lv_names or len(set(lv_names)) < len(lv_names):
            lv_names = list(r_names)
        return cls(
            formula=formula,
            arg=arg,
            model_spec=spec,
            columns=tuple(columns),
            categorical_levels=levels,
            perm=perm_arr,
            r_names=tuple(r_names),
            f_names=tuple(f_names),
            has_intercept="Intercept" in f_names,
            label=_formula_label(f_written),
            levels=tuple(lv_names),
            where=where,
        )

    @property
    def is_numeric(self) -> bool:
        """No categorical variable in the formula."""
        return not self.categorical_levels

    def matrix(self, obs: pd.DataFrame, sparse: bool = False, csr_blocks: bool = False):
        """The block's columns for the cells of ``obs``: dense, or CSR (``sparse``: coded by
        formulaic's sparse output; ``csr_blocks``: coded densely in row blocks, each stored
        as CSR, so the values are the dense ones and the dense matrix never exists)."""
        from formulaic.errors import DataMismatchWarning

        if len(obs) == 0:
            n_col = len(self.perm)
            return sp.csr_matrix((0, n_col)) if sparse or csr_blocks else np.zeros((0, n_col))
        check_columns_exist(obs, self.columns, self.arg, self.where)
        check_no_nan(obs, self.columns, self.arg)
        for col, levels in self.categorical_levels.items():
            _check_known_levels(obs, col, levels, self.arg)
        data = _logical_as_factor(obs[list(self.columns)])

        def model_matrix(rows, output):
            with warnings.catch_warnings(), np.errstate(all="ignore"):  # non-finite: see below
                warnings.simplefilter("error", DataMismatchWarning)
                return self.model_spec.get_model_matrix(rows, na_action="ignore", output=output)

        if sparse:
            M = sp.csr_matrix(model_matrix(data, "sparse").tocsc()[:, self.perm], dtype=np.float64)
        else:
            # row blocks: formulaic's intermediates are a few copies of the block, not of X
            n = len(data)
            M = np.empty((0 if csr_blocks else n, len(self.perm)))
            parts = []
            for a in range(0, n, _DENSE_ROWS):
                b = min(n, a + _DENSE_ROWS)
                block = model_matrix(data.iloc[a:b], "pandas")
                block = np.asarray(block, dtype=np.float64)[:, self.perm]
                if csr_blocks:
                    parts.append(sp.csr_matrix(block))
                else:
                    M[a:b] = block
            if csr_blocks:
                M = sp.csr_matrix(sp.vstack(parts, format="csr"), dtype=np.float64)
        _check_finite_values(M, obs, self.r_names, self.arg, self.where)
        return M


# --------------------------------------------------------------------------------------------
# grouping blocks (random intercepts of a factor or of an interaction of factors)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _GroupBlock:
    """Indicator columns of the (observed) levels of one grouping column or interaction."""

    label: str  # the grouping, "donor_id" or "donor_id:cell_type"
    arg: str
    columns: tuple[str, ...]
    levels: tuple[tuple, ...]  # levels of each column
    keys: np.ndarray  # mixed-radix keys of the observed combinations (sorted)
    names: tuple[str, ...]  # R names, "donor_idD01:cell_typeB cell"
    level_labels: tuple[str, ...]  # "D01:B cell"
    where: str  # what the messages call it: "random term '(1 | donor_id)'"

    @staticmethod
    def _levels_of(s: pd.Series) -> list:
        if isinstance(s.dtype, pd.CategoricalDtype):
            return list(s.cat.categories)
        vals = pd.unique(s.to_numpy())
        try:
            return sorted(vals.tolist())
        except TypeError:  # mixed types: sort by string
            return sorted(vals.tolist(), key=str)

    @classmethod
    def build(
        cls, obs: pd.DataFrame, columns: tuple[str, ...], arg: str, where: str
    ) -> _GroupBlock:
        check_columns_exist(obs, columns, arg, where)
        check_no_nan(obs, columns, arg)
        _check_no_empty_categories(obs, columns, arg)
        label = ":".join(columns)
        levels = tuple(tuple(cls._levels_of(obs[c])) for c in columns)
        empty = np.zeros(0, dtype=np.int64)
        self = cls(label, arg, columns, levels, empty, (), (), where)
        keys = np.unique(self._keys(obs))
        radix = [len(lv) for lv in levels]
        names, labels = [], []
        for k in keys.tolist():
            parts, lvs = [], []
            for c, lv, r in zip(columns, levels, radix, strict=True):
                lvs.append(level_label(lv[k % r]))
                parts.append(f"{c}{lvs[-1]}")
                k //= r
            names.append(":".join(parts))
            labels.append(":".join(lvs))
        return cls(label, arg, columns, levels, keys, tuple(names), tuple(labels), where)

    @property
    def r_names(self) -> tuple[str, ...]:
        return self.names

    def _keys(self, obs: pd.DataFrame) -> np.ndarray:
        key = np.zeros(len(obs), dtype=np.int64)
        mult = 1
        for c, lv in zip(self.columns, self.levels, strict=True):
            _check_known_levels(obs, c, lv, self.arg)
            codes = pd.Categorical(obs[c].to_numpy(), categories=list(lv)).codes
            key += mult * codes.astype(np.int64)
            mult *= len(lv)
        return key

    def matrix(self, obs: pd.DataFrame) -> sp.csr_matrix:
        n, q = len(obs), len(self.keys)
        if n == 0:
            return sp.csr_matrix((0, q))
        check_columns_exist(obs, self.columns, self.arg, self.where)
        check_no_nan(obs, self.columns, self.arg)
        keys = self._keys(obs)
        col = np.searchsorted(self.keys, keys)
        bad = (col >= q) | (self.keys[np.minimum(col, q - 1)] != keys)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            combo = tuple(obs[c].iloc[i] for c in self.columns)
            raise ValueError(
                f"{self.arg}: combination {combo} of {self.label!r} (chunk row {i}) was not "
                "present when the design was built"
            )
        return sp.csr_matrix(
            (np.ones(n), col, np.arange(n + 1, dtype=np.int64)), shape=(n, q), dtype=np.float64
        )


@dataclass(frozen=True, eq=False)
class _SlopeBlock:
    """An uncorrelated random slope, lme4's ``(0 + x | g)``: column j of Z is x on the cells of
    level j of the grouping g and 0 elsewhere, one column per observed level of g.

    For a single grouping column it is the block of the formula ``"~ 0 + g:x"`` (same values,
    names and order); for an interaction grouping it keeps, as ``(1 | a:b)`` does, only the
    combinations present in the data.
    """

    group: _GroupBlock
    slope: _FormulaBlock  # "~ 0 + x": exactly one numeric column

    @classmethod
    def build(cls, obs: pd.DataFrame, term: _RandomTerm) -> _SlopeBlock:
        group = _GroupBlock.build(obs, term.columns, "random", term.where)
        block = _FormulaBlock.build(obs, f"~ 0 + {term.slope}", "random", term.where)
        if not block.is_numeric or len(block.perm) != 1:
            g = ":".join(term.columns)
            kind = "is categorical" if not block.is_numeric else "makes several columns"
            raise _term_error(
                term.text, term.entry,
                f"a random slope needs one numeric variable and {term.slope!r} {kind} (lme4 "
                "would give its columns a correlation matrix); a random effect per level of "
                f"{term.slope} within {g}, with one variance, is (1 | {g}:{term.slope})",
            )  # fmt: skip
        return cls(group, block)

    @property
    def label(self) -> str:
        return f"{self.group.label}:{self.slope.r_names[0]}"

    @property
    def r_names(self) -> tuple[str, ...]:
        return tuple(f"{nm}:{self.slope.r_names[0]}" for nm in self.group.names)

    @property
    def level_labels(self) -> tuple[str, ...]:
        return self.group.level_labels

    def matrix(self, obs: pd.DataFrame) -> sp.csr_matrix:
        Z = self.group.matrix(obs)  # one stored 1 per row, rows in order
        if len(obs) == 0:
            return Z
        Z.data = self.slope.matrix(obs)[:, 0].copy()
        Z.eliminate_zeros()
        return Z


def _block_width(b) -> int:
    return len(b.perm) if isinstance(b, _FormulaBlock) else len(b.level_labels)


def _block_levels(b) -> tuple[str, ...]:
    return b.levels if isinstance(b, _FormulaBlock) else b.level_labels


def _block_matrix(b, obs: pd.DataFrame) -> sp.csr_matrix:
    return b.matrix(obs, sparse=True) if isinstance(b, _FormulaBlock) else b.matrix(obs)


# --------------------------------------------------------------------------------------------
# random terms: the grouping / formula syntax and lme4's (1 | g) syntax
# --------------------------------------------------------------------------------------------

_SUPPORTED = (
    "supported: a grouping column 'donor_id' or (1 | donor_id); an interaction "
    "'donor_id:cell_type' or (1 | donor_id:cell_type); nesting (1 | donor_id/cell_type); "
    "crossed terms joined by '+', (1 | donor_id) + (1 | batch); an uncorrelated random slope of "
    "a numeric variable, (0 + time | donor_id) or, with the intercept, (1 + time || donor_id); "
    "a one-sided formula '~ 0 + donor_id:time' (one block)"
)
#: characters that cannot appear in an unquoted grouping column of an lme4 term
_GROUPING_OPERATORS = set("()+-*^|~%=,")


@dataclass(frozen=True)
class _RandomTerm:
    """One block of Z as parsed from ``random``, before it meets the data."""

    kind: str  # "group", "slope" or "formula"
    text: str  # the term as the user wrote it, for messages: "(1 | donor_id)"
    entry: str  # the entry of ``random`` it comes from
    columns: tuple[str, ...] = ()  # the grouping (group, slope)
    slope: str = ""  # the slope expression (slope)
    formula: str = ""  # the one-sided formula (formula)

    @property
    def where(self) -> str:
        return f"random term {self.text!r}"


def _term_error(term: str, entry: str, why: str) -> ValueError:
    within = f" in {entry!r}" if term.strip() != entry.strip() else ""
    return ValueError(f"random: term {term!r}{within}: {why}; {_SUPPORTED}")


def _split_top_level(text: str, entry: str, ops: str) -> list[tuple[str, str]]:
    """Split ``text`` at the characters ``ops`` outside parentheses and backticks.

    Returns ``[(operator before the part, part)]``, the first with operator ``""``.
    """
    parts: list[tuple[str, str]] = []
    depth, quoted, op, start = 0, False, "", 0
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise _term_error(entry, entry, "unbalanced parentheses")
        elif depth == 0 and ch in ops:
            parts.append((op, text[start:i].strip()))
            op, start = ch, i + 1
    if depth != 0 or quoted:
        raise _term_error(entry, entry, "unbalanced parentheses or backticks")
    parts.append((op, text[start:].strip()))
    return parts


def _strip_parens(text: str) -> str:
    """``((1 | g))`` → ``1 | g``: remove parentheses that enclose the whole text."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text  # "(a) + (b)": the first parenthesis closes early
        text = text[1:-1].strip()
    return text


def _grouping_columns(part: str, term: str, entry: str) -> tuple[str, ...]:
    """``"donor_id:cell_type"`` → ``("donor_id", "cell_type")``; backticks quote a name."""
    cols = []
    for _, tok in _split_top_level(part, entry, ":"):
        if len(tok) >= 2 and tok[0] == tok[-1] == "`":
            tok = tok[1:-1]
        elif set(tok) & (_GROUPING_OPERATORS | {"`"}):
            raise _term_error(
                term, entry, f"the grouping {part!r} is not a column or an interaction of columns"
            )
        if not tok:
            raise _term_error(term, entry, "empty grouping (a column name is missing)")
        cols.append(tok)
    if len(set(cols)) < len(cols):
        raise _term_error(term, entry, f"the grouping {part!r} repeats a column")
    return tuple(cols)


def _groupings(grouping: str, term: str, entry: str) -> list[tuple[str, ...]]:
    """The groupings of ``g``: ``a/b/c`` expands, as in lme4, to ``a``, ``a:b``, ``a:b:c``."""
    if not grouping:
        raise _term_error(term, entry, "empty grouping (nothing after '|')")
    out: list[tuple[str, ...]] = []
    prefix: tuple[str, ...] = ()
    for _, part in _split_top_level(grouping, entry, "/"):
        if not part:
            raise _term_error(term, entry, "empty grouping in a nesting 'a/b'")
        prefix = prefix + _grouping_columns(part, term, entry)
        out.append(prefix)
    return out


def _effects(lhs: str, term: str, entry: str) -> tuple[bool, list[str]]:
    """(intercept, slopes) of the left-hand side of ``lhs | g``, as R reads ``1 + x``, ``0 + x``,
    ``x - 1``."""
    if not lhs:
        raise _term_error(term, entry, "empty left-hand side (write (1 | g) for an intercept)")
    intercept, slopes = True, []
    for k, (op, part) in enumerate(_split_top_level(lhs, entry, "+-")):
        if not part:
            if k == 0:  # a leading sign: "-1 + x", "+ x"
                continue
            raise _term_error(term, entry, "an empty term in the left-hand side")
        if part in ("0", "1") or op == "-":
            if op == "-" and part != "1":
                raise _term_error(term, entry, f"removing {part!r} is not supported")
            intercept = part == "1" and op != "-"
            continue
        if "|" in part:
            raise _term_error(term, entry, f"a '|' inside the effects {lhs!r}")
        if part not in slopes:
            slopes.append(part)
    return intercept, slopes


def _bar_term(text: str, term: str, entry: str) -> list[_RandomTerm]:
    """The blocks of one ``lhs | g`` or ``lhs || g`` term."""
    bars = [(op, part) for op, part in _split_top_level(text, entry, "|")]
    if len(bars) == 3 and bars[1][1] == "":  # "lhs || g"
        double, lhs, grouping = True, bars[0][1], bars[2][1]
    elif len(bars) == 2:
        double, lhs, grouping = False, bars[0][1], bars[1][1]
    else:
        raise _term_error(term, entry, "expected one '|' (or '||') between effects and grouping")
    intercept, slopes = _effects(lhs, term, entry)
    groupings = _groupings(grouping, term, entry)
    if not intercept and not slopes:
        raise _term_error(term, entry, "no random effect (the left-hand side removes everything)")
    if not double and (len(slopes) > 1 or (intercept and slopes)):
        raise _term_error(
            term, entry,
            "correlated random effects (lme4 estimates their covariance matrix) are not "
            f"supported; uncorrelated ones are ({lhs} || {grouping})",
        )  # fmt: skip
    out = []
    for cols in groupings:
        if intercept:
            out.append(_RandomTerm("group", term, entry, columns=cols))
        out.extend(_RandomTerm("slope", term, entry, columns=cols, slope=x) for x in slopes)
    return out


def _random_terms(entry: str) -> list[_RandomTerm]:
    """Parse one entry of ``random`` into its blocks (see the module docstring)."""
    text = entry.strip()
    if not text:
        raise _term_error(entry, entry, "empty term")
    if "|" not in text:
        if text.startswith("~"):
            return [_RandomTerm("formula", entry, entry, formula=text)]
        columns = tuple(c.strip() for c in text.split(":"))
        return [_RandomTerm("group", entry, entry, columns=columns)]
    body = text[1:].strip() if text.startswith("~") else text
    if len(_split_top_level(body, entry, "|")) > 1:  # nlme's "~ 1 | g": one unparenthesised term
        return _bar_term(body, entry, entry)
    out = []
    for op, part in _split_top_level(body, entry, "+-"):
        inner = _strip_parens(part)
        if op == "-" or not part.startswith("(") or len(_split_top_level(inner, entry, "|")) < 2:
            shown = f"{op} {part}".strip() if op == "-" else part
            raise _term_error(
                shown, entry,
                "not a random-effect term (fixed effects belong in `fixed`; a random intercept "
                "per level of a column is (1 | column))",
            )  # fmt: skip
        out.extend(_bar_term(inner, part, entry))
    return out


def _build_block(obs: pd.DataFrame, term: _RandomTerm):
    if term.kind == "formula":
        b = _FormulaBlock.build(obs, term.formula, "random", term.where)
        if b.has_intercept:
            raise ValueError(
                f"random formula {term.formula!r} has an intercept (a column of ones in Z); write "
                f"'~ 0 + ...' (e.g. '~ 0 + donor_id' for a random intercept per donor_id)"
            )
        if len(b.perm) == 0:
            raise ValueError(f"random formula {term.formula!r} has no columns")
        return b
    if term.kind == "slope":
        return _SlopeBlock.build(obs, term)
    missing = [c for c in term.columns if c not in obs.columns]
    if any(set(c) & _GROUPING_OPERATORS for c in missing):  # "donor_id + batch"
        raise _term_error(term.text, term.entry, "not a column of obs or an interaction a:b")
    return _GroupBlock.build(obs, term.columns, "random", term.where)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DesignSpec:
    """The codings learned from the full cell table; :meth:`apply` rebuilds X and Z on any chunk.

    Attributes
    ----------
    fixed : str
        The fixed-effects formula.
    random : tuple of str
        The entries of ``random`` as given (one entry may hold several lme4 terms, hence
        several blocks).
    fixed_names, formulaic_names : list of str
        Names of the columns of X (R's and formulaic's spelling).
    random_names : list of str
        R-style names of the columns of Z (``donor_idD01``).
    random_blocks : list of str
        The label of each of the K blocks of Z (``donor_id``, ``donor_id:cell_type``,
        ``donor_id:time``).
    random_levels : list of str
        The level label of each column of Z within its block (``D01``, ``D01:CD4 T``).
    d : numpy.ndarray
        Block widths (K,).
    """

    fixed: str
    random: tuple[str, ...]
    _fixed_block: _FormulaBlock
    _random_blocks: tuple  # of _FormulaBlock | _GroupBlock | _SlopeBlock

    @property
    def fixed_names(self) -> list[str]:
        return list(self._fixed_block.r_names)

    @property
    def formulaic_names(self) -> list[str]:
        return list(self._fixed_block.f_names)

    @property
    def random_names(self) -> list[str]:
        return [name for b in self._random_blocks for name in b.r_names]

    @property
    def random_blocks(self) -> list[str]:
        return [b.label for b in self._random_blocks]

    @property
    def random_levels(self) -> list[str]:
        return [lv for b in self._random_blocks for lv in _block_levels(b)]

    @property
    def d(self) -> np.ndarray:
        return np.array([_block_width(b) for b in self._random_blocks], dtype=np.int64)

    def apply(self, obs, sparse_x: bool = False) -> Design:
        """X, Z and d for the cells of ``obs`` (e.g. a chunk), with the columns of the full design.

        Parameters
        ----------
        obs : pandas.DataFrame
            Cell table holding (at least) the columns the formulas use. Levels absent from the
            chunk give all-zero columns; levels never seen when the design was built are an error.
        sparse_x : bool
            X as a CSR matrix (see :func:`design`).

        Returns
        -------
        Design
        """
        obs = _check_obs(obs)
        X = self._fixed_block.matrix(obs, csr_blocks=sparse_x)
        Z = _hstack([_block_matrix(b, obs) for b in self._random_blocks], len(obs))
        return Design(
            X=X,
            Z=Z,
            d=self.d,
            fixed_names=self.fixed_names,
            formulaic_names=self.formulaic_names,
            random_names=self.random_names,
            random_blocks=self.random_blocks,
            random_levels=self.random_levels,
            spec=self,
        )


def _hstack(blocks, n: int) -> sp.csr_matrix:
    if not blocks:
        return sp.csr_matrix((n, 0), dtype=np.float64)
    return sp.csr_matrix(sp.hstack(blocks, format="csr"), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Design:
    """Design matrices of an LMM (see the module docstring for conventions).

    Pass it whole to :func:`pyflashmm.summary_stats` (``summary_stats(Y, design)``) so that the
    names of the coefficients, of the variance components and of the random effects reach the
    fit.

    Attributes
    ----------
    X : numpy.ndarray or scipy.sparse.csr_matrix
        Fixed-effects design, float64, n × p, columns in R's ``model.matrix`` order: dense, or
        CSR when built with ``design(..., sparse_x=True)``.
    Z : scipy.sparse.csr_matrix
        Random-effects design, float64, n × q: the K blocks side by side.
    d : numpy.ndarray
        Block widths (K,), int64, ``d.sum() == q`` (empty when there is no random effect).
    fixed_names : list of str
        R's ``model.matrix`` names of the columns of X (``log(libsize)``, ``cell_typeB cell``).
    formulaic_names : list of str
        formulaic's names of the same columns (``cell_type[T.B cell]``).
    random_names : list of str
        Names of the columns of Z, R-style: ``donor_idD01`` for ``"donor_id"`` or
        ``(1 | donor_id)``, ``donor_idD01:cell_typeB cell`` for ``"donor_id:cell_type"``,
        ``donor_idD01:time`` for ``"~ 0 + donor_id:time"`` or ``(0 + time | donor_id)``.
    random_blocks : list of str
        The label of each block (length K): ``donor_id``, ``donor_id:cell_type``,
        ``donor_id:time`` (see the module docstring).
    random_levels : list of str
        The level label of each column of Z within its block (length q): ``D01``,
        ``D01:B cell``.
    spec : DesignSpec
        Reusable spec: ``spec.apply(obs_chunk)`` (or ``design.apply``) rebuilds X and Z.
    """

    X: np.ndarray | sp.csr_matrix
    Z: sp.csr_matrix
    d: np.ndarray
    fixed_names: list[str]
    formulaic_names: list[str]
    random_names: list[str]
    random_blocks: list[str]
    random_levels: list[str]
    spec: DesignSpec

    @property
    def n(self) -> int:
        """Number of cells (rows)."""
        return int(self.X.shape[0])

    def apply(self, obs) -> Design:
        """Same as ``self.spec.apply(obs)``: the design of a chunk of cells, same columns (X
        sparse if this design's is)."""
        return self.spec.apply(obs, sparse_x=sp.issparse(self.X))

    def X_frame(self, index=None) -> pd.DataFrame:
        """X as a (dense) DataFrame with the R-style column names."""
        X = self.X.toarray() if sp.issparse(self.X) else self.X
        return pd.DataFrame(X, columns=self.fixed_names, index=index)


def _random_entries(random) -> list[str]:
    if random is None:
        return []
    if isinstance(random, str):
        return [random]
    if isinstance(random, Sequence):
        out = list(random)
        for r in out:
            if not isinstance(r, str):
                raise TypeError(
                    "random must hold strings (column names, 'a:b', '(1 | g)' terms or "
                    f"'~ ...' formulas); got {r!r}"
                )
        return out
    raise TypeError(
        f"random must be None, a string or a list of strings; got {type(random).__name__}"
    )


def random_groupings(random) -> list[tuple[str, tuple[str, ...]]]:
    """The terms of ``random`` and their grouping columns, parsed without the data.

    Returns ``[(kind, columns)]`` per block: ``kind`` is ``"group"`` (a random intercept per
    level of ``columns``), ``"slope"`` (a slope per level) or ``"formula"`` (a one-sided formula,
    no grouping: ``columns`` is empty). Raises the errors of :func:`design` for bad terms.
    """
    return [(t.kind, t.columns) for e in _random_entries(random) for t in _random_terms(e)]


def design(obs, fixed, random=None, *, sparse_x: bool = False) -> Design:
    """Build X, Z and d from a cell table and R-style formulas.

    The model is y = Xβ + Σₖ Zₖbₖ + ε with bₖ ~ N(0, σₖ² I) independent across the K blocks of
    Z = [Z₁ … Z_K] and ε ~ N(0, σ² I): each block of ``random`` has one variance σₖ².

    Parameters
    ----------
    obs : pandas.DataFrame
        One row per cell (e.g. ``adata.obs``).
    fixed : str
        One-sided fixed-effects formula, e.g. ``"~ 0 + log(libsize) + cell_type +
        cell_type:condition"``. Coded as R's ``model.matrix`` (treatment contrasts, first level
        as reference, R's column order); see the module docstring for level order.
    random : str or list of str, optional
        The random-effect blocks. Each entry is a grouping column (``"donor_id"``), an
        interaction of grouping columns (``"donor_id:cell_type"``, nested; observed
        combinations only), a one-sided formula (``"~ 0 + donor_id:time"``, its columns form one
        block), or lme4 terms: ``"(1 | donor_id)"``, ``"(1 | donor_id) + (1 | batch)"``
        (two blocks), ``"(1 | donor_id/cell_type)"``, ``"(0 + time | donor_id)"``,
        ``"(1 + time || donor_id)"`` (two uncorrelated blocks), nlme's ``"~ 1 | donor_id"``.
        ``None``: no Z (q = 0).
    sparse_x : bool
        Store X as CSR (the same values, coded densely 65,536 rows at a time): an atlas's
        dense X takes n·p·8 bytes (0.47 GB for a million cells and p = 59) while most of its
        entries are cell-type indicators that are 0. :func:`pyflashmm.summary_stats` takes
        either form (its XᵀX and ZᵀX then come from sparse products, equal to the dense ones
        to rounding); ``X_frame()`` gives a dense copy.

    Returns
    -------
    Design
        ``X``, sparse ``Z``, ``d``, names, block and level labels and a reusable ``spec``.

    Raises
    ------
    KeyError
        A formula or ``random`` uses a column that is not in ``obs`` (close matches listed).
    ValueError
        NaN in a used column, a value that is not finite after the formula (``log`` of 0),
        unused categories of a Categorical in use, aliased columns of X, a random formula with
        an intercept, a formula that does not parse, an unsupported random term (correlated
        effects, a categorical slope, a fixed term in ``random``), a block given twice.

    Examples
    --------
    >>> des = design(obs, "~ 0 + cell_type", random="(1 | donor_id)")  # doctest: +SKIP
    >>> des.random_blocks, des.random_levels[:2]  # doctest: +SKIP
    (['donor_id'], ['D01', 'D02'])
    >>> chunk = des.apply(obs.iloc[:1000])  # doctest: +SKIP
    """
    obs = _check_obs(obs)
    if len(obs) == 0:
        raise ValueError("obs has no rows")
    entries = _random_entries(random)
    terms = [t for entry in entries for t in _random_terms(entry)]  # syntax first, then data
    fixed_block = _FormulaBlock.build(obs, fixed, "fixed")
    blocks = [_build_block(obs, t) for t in terms]
    labels = [b.label for b in blocks]
    for k, label in enumerate(labels):
        if label in labels[:k]:
            raise ValueError(
                f"random: the block {label!r} is given twice ({terms[labels.index(label)].text!r}"
                f" and {terms[k].text!r}); its variance would not be identifiable"
            )
    spec = DesignSpec(fixed, tuple(entries), fixed_block, tuple(blocks))
    des = spec.apply(obs, sparse_x=sparse_x)
    if des.X.shape[1]:
        XX = des.X.T @ des.X
        _checks.check_full_rank(XX.toarray() if sp.issparse(XX) else XX, des.fixed_names,
                                name="X (fixed)")  # fmt: skip
    return des
