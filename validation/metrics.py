r"""Error rates and detection metrics of the calibration and power experiments.

Wilson interval (type-I error)
------------------------------
For k rejections in n tests and z = Φ⁻¹(1 − (1 − level)/2), with p̂ = k/n,

.. math::

    \frac{\hat p + z^2/(2n) \pm z\sqrt{\hat p(1-\hat p)/n + z^2/(4n^2)}}{1 + z^2/n}.

Benjamini–Hochberg
------------------
p_(i) ↦ min_{j ≥ i} min(1, m p_(j)/j) over the m finite p-values (NaN stays NaN);
:func:`pyflashmm._multitest.bh_adjust`, re-exported here so that every experiment uses the one
implementation.

ROC AUC
-------
With s = −p (small p-values rank a gene as DE; a missing p-value counts as p = 1), the
Mann–Whitney form AUC = (R₊ − n₊(n₊ + 1)/2)/(n₊n₋), R₊ the sum of the average ranks of
the n₊ DE genes among all genes: P(s_DE > s_null) + ½ P(s_DE = s_null).

Observed FDR–TPR curve
----------------------
For each distinct cutoff c of the adjusted p-values, the genes with padj ≤ c are called:
TPR(c) = TP(c)/n_DE and observed FDR(c) = FP(c)/(FP(c) + TP(c)) (iCOBRA's curves; genes
with a missing adjusted p-value are never called).

Tail counts
-----------
Of n finite null p-values, the number at or below t is Binomial(n, t) ≈ Poisson(nt) when
calibrated; a count outside the central ``level`` interval of Poisson(nt) (quantiles
(1 − level)/2 and (1 + level)/2) flags the tail where BH operates, which the type-I error at
0.05 does not see.

TPR at a matched observed FDR
-----------------------------
Genes ranked by p-value (ties kept together; NaN last, never called): among the cutoffs whose
observed FDR = FP/(FP + TP) is at most the target, the one with the most discoveries; its TPR
= TP/n_DE. Methods are then compared at the same realised error rate instead of at a nominal
BH level that some of them do not keep.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from pyflashmm._multitest import bh_adjust

__all__ = [
    "bh_adjust",
    "called",
    "fdr_tpr_curve",
    "roc_auc",
    "tail_counts",
    "tpr_at_matched_fdr",
    "wilson_interval",
]


def wilson_interval(k, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k/n (vectorised; NaN where n = 0).

    Parameters
    ----------
    k, n : array_like of int
        Successes (rejections) and trials (tests), 0 ≤ k ≤ n.
    level : float
        Confidence level in (0, 1).

    Returns
    -------
    (low, high) : ndarrays of float
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("k must satisfy 0 <= k <= n")
    z = stats.norm.ppf(0.5 + level / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z**2 / n
        centre = (p + z**2 / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z**2 / (4.0 * n**2)) / denom
    low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return low, high


def _labels(is_de, size: int) -> np.ndarray:
    lab = np.asarray(is_de, dtype=bool).ravel()
    if lab.size != size:
        raise ValueError(f"is_de has length {lab.size}, expected {size}")
    return lab


def roc_auc(p_value, is_de) -> float:
    """ROC AUC of ranking genes by p-value (small p = predicted DE).

    AUC = P(p_DE < p_null) + ½ P(p_DE = p_null), computed from ranks (Mann–Whitney):
    AUC = (R_DE − n_DE(n_DE + 1)/2) / (n_DE · n_null), R_DE the sum of the mid-ranks of the
    DE genes' −p.

    Parameters
    ----------
    p_value : array_like of float
        Raw p-values; NaN counts as 1 (never called).
    is_de : array_like of bool
        The truth.

    Returns
    -------
    float
        The AUC, NaN when either class is empty.
    """
    p = np.asarray(p_value, dtype=np.float64).ravel()
    lab = _labels(is_de, p.size)
    n_pos = int(lab.sum())
    n_neg = lab.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    score = -np.where(np.isnan(p), 1.0, p)
    ranks = stats.rankdata(score)  # average ranks of ties
    return float((ranks[lab].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def called(adj_p_value, is_de, threshold: float) -> tuple[int, int]:
    """True and false positives of calling the genes with adjusted p ≤ ``threshold``.

    Parameters
    ----------
    adj_p_value : array_like of float
        Adjusted p-values; NaN is never called.
    is_de : array_like of bool
        The truth.
    threshold : float
        The BH level.

    Returns
    -------
    (int, int)
        TP = #{called ∧ DE}, FP = #{called ∧ ¬DE}; the observed FDR is FP / (TP + FP).
    """
    padj = np.asarray(adj_p_value, dtype=np.float64).ravel()
    lab = _labels(is_de, padj.size)
    with np.errstate(invalid="ignore"):
        hit = padj <= threshold
    return int((hit & lab).sum()), int((hit & ~lab).sum())


def _calls_by_cutoff(values: np.ndarray, lab: np.ndarray):
    """(cutoffs, TP, FP): every distinct non-NaN value in increasing order and the true and
    false positives of calling the genes at or below it (NaN is never called)."""
    ok = ~np.isnan(values)
    order = np.argsort(values[ok], kind="stable")
    v = values[ok][order]
    tp = np.cumsum(lab[ok][order])
    fp = np.cumsum(~lab[ok][order])
    last = np.append(v[1:] != v[:-1], True) if v.size else np.zeros(0, bool)
    return v[last], tp[last], fp[last]  # the last gene of each run of equal values


def fdr_tpr_curve(adj_p_value, is_de, *, max_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Observed FDR and TPR at every distinct cutoff of ``adj_p_value``, thinned.

    Parameters
    ----------
    adj_p_value : array_like
        Adjusted p-values (NaN: never called).
    is_de : array_like of bool
        Truth; needs at least one DE gene.
    max_points : int
        At most this many points are kept, evenly spaced over the cutoffs in order; the first
        and the last cutoff are always kept.

    Returns
    -------
    (fdr, tpr) : ndarrays, in order of increasing cutoff (so TPR is non-decreasing)
    """
    if int(max_points) < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    padj = np.asarray(adj_p_value, dtype=np.float64).ravel()
    lab = _labels(is_de, padj.size)
    n_de = int(lab.sum())
    if n_de == 0:
        raise ValueError("is_de: the curve needs at least one DE gene")
    _, tp, fp = _calls_by_cutoff(padj, lab)
    if tp.size == 0:
        return np.zeros(0), np.zeros(0)
    if tp.size > max_points:
        keep = np.unique(np.round(np.linspace(0, tp.size - 1, int(max_points))).astype(int))
        tp, fp = tp[keep], fp[keep]
    return fp / (fp + tp), tp / n_de


def tail_counts(p_value, thresholds=(1e-3, 1e-4), level: float = 0.99) -> list[dict]:
    """Null p-values at or below each threshold against Poisson(n·t) (the module docstring).

    Returns
    -------
    list of dict
        Per threshold t: ``threshold``, ``n_tests`` (finite p-values), ``observed``,
        ``expected`` = n·t, ``lo`` and ``hi`` (the central ``level`` interval of the count) and
        ``within`` (lo ≤ observed ≤ hi).
    """
    p = np.asarray(p_value, dtype=np.float64).ravel()
    p = p[np.isfinite(p)]
    out = []
    for t in thresholds:
        mu = p.size * float(t)
        lo, hi = stats.poisson.ppf([(1 - level) / 2, (1 + level) / 2], mu)
        k = int((p <= t).sum())
        out.append(dict(threshold=float(t), n_tests=int(p.size), observed=k, expected=mu,
                        lo=int(lo), hi=int(hi), within=bool(lo <= k <= hi)))  # fmt: skip
    return out


def tpr_at_matched_fdr(p_value, is_de, fdr: float = 0.05) -> dict:
    """TPR at the largest cutoff whose observed FDR is at most ``fdr`` (the module docstring).

    Returns
    -------
    dict
        ``tpr``, ``n_discoveries``, ``tp``, ``fp``, ``observed_fdr`` and ``cutoff`` (the
        largest p-value called; NaN with no discovery, when TPR is 0).
    """
    p = np.asarray(p_value, dtype=np.float64).ravel()
    lab = _labels(is_de, p.size)
    n_de = int(lab.sum())
    if n_de == 0:
        raise ValueError("is_de: TPR needs at least one DE gene")
    v, tp, fp = _calls_by_cutoff(p, lab)
    good = np.flatnonzero(fp <= fdr * (fp + tp))
    if good.size == 0:
        return dict(tpr=0.0, n_discoveries=0, tp=0, fp=0, observed_fdr=np.nan, cutoff=np.nan)
    i = good[np.argmax(tp[good] + fp[good])]
    n = int(tp[i] + fp[i])
    return dict(tpr=float(tp[i] / n_de), n_discoveries=n, tp=int(tp[i]), fp=int(fp[i]),
                observed_fdr=float(fp[i] / n), cutoff=float(v[i]))  # fmt: skip
