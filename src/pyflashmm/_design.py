"""Design matrices of a linear mixed model from a cell table and R-style formulas.

Model (notation of :mod:`pyflashmm.sumstats`)::

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
``random`` is ``None``, one entry or a list of entries; each entry makes one block of Z (one
variance component):

* ``"sam"`` — a grouping column: one indicator column per level (R's ``model.matrix(~ 0 +
  as.factor(sam))``). Names ``samA1`` (column name pasted to the level, as R).
* ``"sam:cls"`` — the interaction of grouping columns (nested factors): one indicator per
  combination *present in the data* (lme4's ``(1 | sam:cls)``), first column varying fastest, as
  R's ``model.matrix(~ 0 + sam:cls)`` without its all-zero columns. Names ``samA1:cls1``.
  Crossed factors are two entries, ``["sam", "batch"]``.
* ``"~ 0 + sam:time"`` — a one-sided formula: its model matrix (coded as for ``fixed``) is one
  block, e.g. an uncorrelated random slope of ``time`` per subject. Names as ``fixed_names``
  (``samA1:time``). A random formula with an intercept is an error (``~ sam`` would put a column
  of ones in Z; write ``~ 0 + sam``).

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
them: R would keep them as all-zero, aliased columns), aliased fixed columns (``ValueError`` naming
them) and, in :meth:`DesignSpec.apply`, levels not seen when the design was built.
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


def _check_columns_exist(obs: pd.DataFrame, columns, arg: str, what: str) -> None:
    known = [str(c) for c in obs.columns]
    for col in columns:
        if col not in obs.columns:
            close = difflib.get_close_matches(str(col), known, n=3, cutoff=0.5)
            hint = f"; close matches: {close}" if close else f"; obs has columns {known[:20]}"
            raise _checks.MissingColumnError(
                f"{arg}: column {col!r} used in {what} is not in obs{hint}"
            )


def _check_no_nan(obs: pd.DataFrame, columns, arg: str) -> None:
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
    """Boolean columns become categoricals (levels False < True present), as R codes logicals."""
    bools = [c for c in frame.columns if frame[c].dtype == bool]
    if not bools:
        return frame
    frame = frame.copy()
    for c in bools:
        present = sorted(pd.unique(frame[c].to_numpy()).tolist())
        frame[c] = pd.Categorical(frame[c].to_numpy(), categories=present)
    return frame


def _level_str(v) -> str:
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
    from formulaic.errors import FormulaSyntaxError

    if not isinstance(formula, str):
        raise TypeError(f"{arg} must be a formula string such as '~ 0 + cls'; got {formula!r}")
    text = formula.strip()
    if not text.startswith("~"):
        raise ValueError(f"{arg} must be a one-sided formula starting with '~'; got {formula!r}")
    try:
        f = Formula(text)
        f_written = Formula(text, _ordering="none")
    except FormulaSyntaxError as e:
        msg = re.sub(r"\x1b\[[0-9;]*m|[⧛⧚]", "", str(e)).strip()
        raise ValueError(f"{arg}: cannot parse formula {formula!r}: {msg}") from None
    return f, f_written


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
    """Permutation (formulaic → R order) and R names for the columns of one encoded term."""
    f_names: list[str] = []
    r_names: list[str] = []
    perm: list[int] = []
    offset = 0
    for st in structure.scoped_terms:
        factors = list(st.factors)
        if not factors:  # the intercept
            f_names.append("Intercept")
            r_names.append("(Intercept)")
            perm.append(offset)
            offset += 1
            continue
        labels_f, labels_r = [], []
        for sf in factors:
            key = str(sf.factor)
            kind, state = encoder_state.get(key, (None, {}))
            if getattr(kind, "value", None) == "categorical":
                levels = list(state["categories"])
                if sf.reduced:
                    labels_f.append([f"{key}[T.{lv}]" for lv in levels[1:]])
                    labels_r.append([f"{key}{_level_str(lv)}" for lv in levels[1:]])
                else:
                    labels_f.append([f"{key}[{lv}]" for lv in levels])
                    labels_r.append([f"{key}{_level_str(lv)}" for lv in levels])
            else:
                labels_f.append([key])
                labels_r.append([key])
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
        offset += n_cols
    return perm, f_names, r_names


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

    @classmethod
    def build(cls, obs: pd.DataFrame, formula: str, arg: str) -> _FormulaBlock:
        f, f_written = _parse_formula(formula, arg)
        columns = sorted(f.required_variables)
        _check_columns_exist(obs, columns, arg, f"formula {formula!r}")
        _check_no_nan(obs, columns, arg)
        _check_no_empty_categories(obs, columns, arg)
        mm = f.get_model_matrix(_logical_as_factor(obs[columns]), na_action="raise")
        spec = mm.model_spec
        rank = _variable_order(f_written)
        perm, f_names, r_names = [], [], []
        offset = 0
        for structure in spec.structure:
            p, fn, rn = _term_layout(structure, spec.encoder_state, rank)
            perm.extend(offset + k for k in p)
            f_names.extend(fn)
            r_names.extend(rn)
            offset += len(structure.columns)
        perm_arr = np.asarray(perm, dtype=np.int64)
        if sorted(perm_arr.tolist()) != list(range(mm.shape[1])):  # pragma: no cover - guard
            raise RuntimeError(f"internal error: column layout of {formula!r} not understood")
        levels = {}
        for key, (kind, state) in spec.encoder_state.items():
            if getattr(kind, "value", None) == "categorical" and key in obs.columns:
                levels[key] = list(state["categories"])
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
        )

    def matrix(self, obs: pd.DataFrame, sparse: bool = False):
        from formulaic.errors import DataMismatchWarning

        if len(obs) == 0:
            n_col = len(self.perm)
            return sp.csr_matrix((0, n_col)) if sparse else np.zeros((0, n_col))
        _check_columns_exist(obs, self.columns, self.arg, f"formula {self.formula!r}")
        _check_no_nan(obs, self.columns, self.arg)
        for col, levels in self.categorical_levels.items():
            _check_known_levels(obs, col, levels, self.arg)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataMismatchWarning)
            mm = self.model_spec.get_model_matrix(
                _logical_as_factor(obs[list(self.columns)]),
                na_action="raise",
                output="sparse" if sparse else "pandas",
            )
        if sparse:
            return sp.csr_matrix(mm.tocsc()[:, self.perm], dtype=np.float64)
        return np.ascontiguousarray(np.asarray(mm, dtype=np.float64)[:, self.perm])


# --------------------------------------------------------------------------------------------
# grouping blocks (random intercepts of a factor or of an interaction of factors)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _GroupBlock:
    """Indicator columns of the (observed) levels of one grouping column or interaction."""

    label: str
    arg: str
    columns: tuple[str, ...]
    levels: tuple[tuple, ...]  # levels of each column
    keys: np.ndarray  # mixed-radix keys of the observed combinations (sorted)
    names: tuple[str, ...]

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
    def build(cls, obs: pd.DataFrame, label: str, arg: str) -> _GroupBlock:
        columns = tuple(c.strip() for c in label.split(":"))
        _check_columns_exist(obs, columns, arg, f"random term {label!r}")
        _check_no_nan(obs, columns, arg)
        _check_no_empty_categories(obs, columns, arg)
        levels = tuple(tuple(cls._levels_of(obs[c])) for c in columns)
        self = cls(label, arg, columns, levels, np.zeros(0, dtype=np.int64), ())
        keys = np.unique(self._keys(obs))
        radix = [len(lv) for lv in levels]
        names = []
        for k in keys.tolist():
            parts = []
            for c, lv, r in zip(columns, levels, radix, strict=True):
                parts.append(f"{c}{_level_str(lv[k % r])}")
                k //= r
            names.append(":".join(parts))
        return cls(label, arg, columns, levels, keys, tuple(names))

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
        _check_columns_exist(obs, self.columns, self.arg, f"random term {self.label!r}")
        _check_no_nan(obs, self.columns, self.arg)
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
        One entry per random-effect block (grouping term or formula), in the order of Z's blocks.
    """

    fixed: str
    random: tuple[str, ...]
    _fixed_block: _FormulaBlock
    _random_blocks: tuple  # of _FormulaBlock | _GroupBlock

    @property
    def fixed_names(self) -> list[str]:
        return list(self._fixed_block.r_names)

    @property
    def formulaic_names(self) -> list[str]:
        return list(self._fixed_block.f_names)

    @property
    def random_names(self) -> list[str]:
        out: list[str] = []
        for b in self._random_blocks:
            out.extend(b.r_names if isinstance(b, _FormulaBlock) else b.names)
        return out

    @property
    def d(self) -> np.ndarray:
        return np.array(
            [
                len(b.perm) if isinstance(b, _FormulaBlock) else len(b.keys)
                for b in self._random_blocks
            ],
            dtype=np.int64,
        )

    def apply(self, obs) -> Design:
        """X, Z and d for the cells of ``obs`` (e.g. a chunk), with the columns of the full design.

        Parameters
        ----------
        obs : pandas.DataFrame
            Cell table holding (at least) the columns the formulas use. Levels absent from the
            chunk give all-zero columns; levels never seen when the design was built are an error.

        Returns
        -------
        Design
        """
        obs = _check_obs(obs)
        X = self._fixed_block.matrix(obs)
        Z = _hstack(
            [
                b.matrix(obs, sparse=True) if isinstance(b, _FormulaBlock) else b.matrix(obs)
                for b in self._random_blocks
            ],
            len(obs),
        )
        return Design(
            X=X,
            Z=Z,
            d=self.d,
            fixed_names=self.fixed_names,
            formulaic_names=self.formulaic_names,
            random_names=self.random_names,
            random_blocks=list(self.random),
            spec=self,
        )


def _hstack(blocks, n: int) -> sp.csr_matrix:
    if not blocks:
        return sp.csr_matrix((n, 0), dtype=np.float64)
    return sp.csr_matrix(sp.hstack(blocks, format="csr"), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Design:
    """Design matrices of an LMM (see the module docstring for conventions).

    Attributes
    ----------
    X : numpy.ndarray
        Fixed-effects design, dense float64, n × p, columns in R's ``model.matrix`` order.
    Z : scipy.sparse.csr_matrix
        Random-effects design, float64, n × q: the blocks of ``random`` side by side.
    d : numpy.ndarray
        Block widths (K,), int64, ``d.sum() == q`` (empty when there is no random effect).
    fixed_names : list of str
        R's ``model.matrix`` names of the columns of X (``log(libsize)``, ``cls1:trtB``).
    formulaic_names : list of str
        formulaic's names of the same columns (``cls[1]:trt[T.B]``).
    random_names : list of str
        Names of the columns of Z, R-style: ``samA1`` for grouping column ``sam``,
        ``samA1:cls1`` for ``"sam:cls"``, ``samA1:time`` for ``"~ 0 + sam:time"``.
    random_blocks : list of str
        The ``random`` entry behind each block (length K).
    spec : DesignSpec
        Reusable spec: ``spec.apply(obs_chunk)`` (or ``design.apply``) rebuilds X and Z.
    """

    X: np.ndarray
    Z: sp.csr_matrix
    d: np.ndarray
    fixed_names: list[str]
    formulaic_names: list[str]
    random_names: list[str]
    random_blocks: list[str]
    spec: DesignSpec

    @property
    def n(self) -> int:
        """Number of cells (rows)."""
        return int(self.X.shape[0])

    def apply(self, obs) -> Design:
        """Same as ``self.spec.apply(obs)``: the design of a chunk of cells, same columns."""
        return self.spec.apply(obs)

    def X_frame(self, index=None) -> pd.DataFrame:
        """X as a DataFrame with the R-style column names."""
        return pd.DataFrame(self.X, columns=self.fixed_names, index=index)


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
                    f"random must hold strings (column names, 'a:b' or '~ ...' formulas); got {r!r}"
                )
        return out
    raise TypeError(
        f"random must be None, a string or a list of strings; got {type(random).__name__}"
    )


def design(obs, fixed, random=None) -> Design:
    """Build X, Z and d from a cell table and R-style formulas.

    Parameters
    ----------
    obs : pandas.DataFrame
        One row per cell (e.g. ``adata.obs``).
    fixed : str
        One-sided fixed-effects formula, e.g. ``"~ 0 + log(libsize) + cls + cls:trt"``. Coded as
        R's ``model.matrix`` (treatment contrasts, first level as reference, R's column order);
        see the module docstring for level order.
    random : str or list of str, optional
        One entry per random-effect block (variance component): a grouping column (``"sam"``), an
        interaction of grouping columns (``"sam:cls"``, nested; observed combinations only), or a
        one-sided formula (``"~ 0 + sam:time"``, its columns form one block). ``None``: no Z
        (q = 0).

    Returns
    -------
    Design
        ``X``, sparse ``Z``, ``d``, names and a reusable ``spec``.

    Raises
    ------
    KeyError
        A formula or ``random`` uses a column that is not in ``obs`` (close matches listed).
    ValueError
        NaN in a used column, unused categories of a Categorical in use, aliased columns of X,
        a random formula with an intercept, a formula that does not parse.

    Examples
    --------
    >>> des = design(obs, "~ 0 + log(libsize) + cls + cls:trt", random="sam")  # doctest: +SKIP
    >>> des.fixed_names[:2]  # doctest: +SKIP
    ['log(libsize)', 'cls1']
    >>> chunk = des.apply(obs.iloc[:1000])  # doctest: +SKIP
    """
    obs = _check_obs(obs)
    if len(obs) == 0:
        raise ValueError("obs has no rows")
    fixed_block = _FormulaBlock.build(obs, fixed, "fixed")
    entries = _random_entries(random)
    blocks = []
    for entry in entries:
        if entry.strip().startswith("~"):
            b = _FormulaBlock.build(obs, entry, "random")
            if b.has_intercept:
                raise ValueError(
                    f"random formula {entry!r} has an intercept (a column of ones in Z); write "
                    f"'~ 0 + ...' (e.g. '~ 0 + sam' for a random intercept per sam)"
                )
            if len(b.perm) == 0:
                raise ValueError(f"random formula {entry!r} has no columns")
        else:
            b = _GroupBlock.build(obs, entry, "random")
        blocks.append(b)
    spec = DesignSpec(fixed, tuple(entries), fixed_block, tuple(blocks))
    des = spec.apply(obs)
    if des.X.shape[1]:
        _checks.check_full_rank(des.X.T @ des.X, des.fixed_names, name="X (fixed)")
    return des
