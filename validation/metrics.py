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

Discovery curve
---------------
Genes ranked by p-value (ties kept together, NaN never called); at the end of each run of
tied p-values, k = number of genes called, TP(k), FP(k) = k − TP(k), observed
FDR(k) = FP(k)/k and TPR(k) = TP(k)/n_DE. BH at level α calls the k_α smallest p-values,
k_α = max{i : p_(i) ≤ iα/m} (m finite p-values), so its point (FDR(k_α), TPR(k_α)) lies on the
curve; the curve is iCOBRA's FDR–TPR curve indexed by the number of discoveries, which is shown
with it because an observed FDR from a handful of discoveries is a ratio of small counts.

Log-fold-change accuracy
------------------------
The truth θ_g is a natural-log fold change. A method's estimate e_g is on the scale it claims
(the ``lfc_scale`` of the results): ``log2`` (a log2 fold change of the mean: θ̂ = e·ln 2),
``ln`` (natural log: θ̂ = e) or ``log2_1p`` (a difference of mean log2(1 + count), the LMM's
and lmerTest's scale). Only the first two estimate θ; for them

.. math::

    \mathrm{bias} = \overline{\hat\theta - \theta},\quad
    \mathrm{RMSE} = \sqrt{\overline{(\hat\theta - \theta)^2}},\quad
    \mathrm{magnitude\ error} = \overline{\operatorname{sign}(\theta)\hat\theta - |\theta|}

(negative: estimates shrunk towards 0). On every scale: Pearson's r of (e, θ), the OLS slope
and intercept of e on θ expressed in e's log base (θ/ln 2 for ``log2`` and ``log2_1p``, θ for
``ln``; slope 1 = unbiased for a fold-change scale) and the sign agreement
#{sign(e) = sign(θ)}/n. For ``log2_1p`` the slope and ``bias_sign`` = sign of the mean
magnitude error against the true log2 fold change only say whether the log2(1 + y) difference
is smaller (−1) or larger (+1) than the log2 fold change: it estimates a different quantity,
so bias and RMSE are not reported for it.

Replicate intervals
-------------------
Over the n finite replicate values x_r: the mean x̄ and, for n ≥ 2, the t interval
x̄ ± t_{n−1, (1+level)/2}·s/√n (s the sample standard deviation; wide with 2 replicates:
t_{1, 0.975} = 12.7), or, with ``method="percentile"`` and n ≥ 3, the empirical
(1 − level)/2 and (1 + level)/2 quantiles of the x_r.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from pyflashmm._multitest import bh_adjust

__all__ = [
    "bh_adjust",
    "bh_points",
    "called",
    "discovery_curve",
    "fdr_tpr_curve",
    "lfc_accuracy",
    "replicate_interval",
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
    from figures.style import wilson_interval as wilson_z  # the formula, shared with figures

    return wilson_z(k, n, z=float(stats.norm.ppf(0.5 + level / 2.0)))


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
        ``tpr``, ``n_discoveries``, ``tp``, ``fp``, ``observed_fdr``, ``cutoff`` (the
        largest p-value called; NaN with no discovery, when TPR is 0) and ``n_de``.
    """
    p = np.asarray(p_value, dtype=np.float64).ravel()
    lab = _labels(is_de, p.size)
    n_de = int(lab.sum())
    if n_de == 0:
        raise ValueError("is_de: TPR needs at least one DE gene")
    v, tp, fp = _calls_by_cutoff(p, lab)
    good = np.flatnonzero(fp <= fdr * (fp + tp))
    if good.size == 0:
        return dict(tpr=0.0, n_discoveries=0, tp=0, fp=0, observed_fdr=np.nan, cutoff=np.nan,
                    n_de=n_de)  # fmt: skip
    i = good[np.argmax(tp[good] + fp[good])]
    n = int(tp[i] + fp[i])
    return dict(tpr=float(tp[i] / n_de), n_discoveries=n, tp=int(tp[i]), fp=int(fp[i]),
                observed_fdr=float(fp[i] / n), cutoff=float(v[i]), n_de=n_de)  # fmt: skip


def discovery_curve(p_value, is_de, *, max_points: int | None = None) -> dict:
    """Observed FDR and TPR against the number of discoveries k (the module docstring).

    Parameters
    ----------
    p_value : array_like of float
        Raw p-values (any monotone score works: only the ranking is used); NaN is never called.
    is_de : array_like of bool
        The truth; needs at least one DE gene.
    max_points : int, optional
        Keep at most this many points, evenly spaced in rank (the first and the last always
        kept); None keeps every distinct cutoff.

    Returns
    -------
    dict of ndarrays
        ``k`` (discoveries), ``tp``, ``fp``, ``fdr`` = fp/k, ``tpr`` = tp/n_DE and ``cutoff``
        (the largest p-value called), in order of increasing k; and ``n_de`` (int).
    """
    p = np.asarray(p_value, dtype=np.float64).ravel()
    lab = _labels(is_de, p.size)
    n_de = int(lab.sum())
    if n_de == 0:
        raise ValueError("is_de: the curve needs at least one DE gene")
    v, tp, fp = _calls_by_cutoff(p, lab)
    if max_points is not None:
        if int(max_points) < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        if tp.size > max_points:
            keep = np.unique(np.round(np.linspace(0, tp.size - 1, int(max_points))).astype(int))
            v, tp, fp = v[keep], tp[keep], fp[keep]
    k = tp + fp
    return dict(k=k.astype(np.int64), tp=tp.astype(np.int64), fp=fp.astype(np.int64),
                fdr=fp / np.maximum(k, 1), tpr=tp / n_de, cutoff=v, n_de=n_de)  # fmt: skip


def bh_points(p_value, is_de, levels=(0.01, 0.05, 0.1)) -> list[dict]:
    """The calls of Benjamini–Hochberg at each level: the nominal points of the curve.

    Parameters
    ----------
    p_value : array_like of float
        Raw p-values (NaN: not tested, not counted in m).
    is_de : array_like of bool
        The truth; needs at least one DE gene.
    levels : sequence of float
        BH levels α.

    Returns
    -------
    list of dict
        Per level: ``level``, ``n_discoveries`` (k_α = #{padj ≤ α}), ``tp``, ``fp``,
        ``observed_fdr`` = fp/k_α (NaN when k_α = 0), ``tpr`` = tp/n_DE and ``controlled``
        (observed FDR ≤ α; False when there is no discovery, which has no observed FDR).
    """
    p = np.asarray(p_value, dtype=np.float64).ravel()
    lab = _labels(is_de, p.size)
    n_de = int(lab.sum())
    if n_de == 0:
        raise ValueError("is_de: TPR needs at least one DE gene")
    padj = bh_adjust(p)
    out = []
    for a in levels:
        if not 0.0 < float(a) < 1.0:
            raise ValueError(f"levels must be in (0, 1), got {a}")
        tp, fp = called(padj, lab, float(a))
        k = tp + fp
        fdr = fp / k if k else np.nan
        out.append(dict(level=float(a), n_discoveries=k, tp=tp, fp=fp, observed_fdr=fdr,
                        tpr=tp / n_de, controlled=bool(k and fdr <= a)))  # fmt: skip
    return out


#: the scales a method's ``log_fc`` may be on → (log base of the estimate, estimates θ?)
LFC_SCALES = {
    "log2": (2.0, True),  # log2 fold change of the mean (NB GLMs, edgeR, DESeq2, voom)
    "ln": (np.e, True),  # natural-log fold change
    "log2_1p": (2.0, False),  # difference of mean log2(1 + count): LMM, lmerTest
    "log2_expm1": (2.0, False),  # scanpy's logfoldchanges: log2 ratio of expm1(mean log1p)
}


def lfc_accuracy(estimate, truth, scale: str) -> dict:
    """Accuracy of estimated log fold changes against the natural-log truth (the module
    docstring).

    Parameters
    ----------
    estimate : array_like of float
        The method's estimates on ``scale`` (NaN pairs are dropped).
    truth : array_like of float
        The true natural-log fold changes θ (the DE genes': θ ≠ 0 for the sign agreement).
    scale : {"log2", "ln", "log2_1p"}
        What the estimate is (:data:`LFC_SCALES`).

    Returns
    -------
    dict
        ``scale``, ``comparable`` (the estimate targets θ), ``n`` (finite pairs),
        ``pearson``, ``slope`` and ``intercept`` (OLS of the estimate on θ in the estimate's
        log base), ``sign_agreement``, ``bias`` and ``rmse`` (natural-log units; NaN unless
        comparable), ``magnitude_error`` (mean sign(θ)·θ̂ − |θ| against the truth in the
        estimate's base, natural-log units when comparable and log2 units otherwise) and
        ``bias_sign`` (its sign: −1 smaller than the truth, +1 larger). NaN where n < 2 (or
        the truth is constant, for r and the slope).
    """
    if scale not in LFC_SCALES:
        raise ValueError(f"scale must be one of {list(LFC_SCALES)}, got {scale!r}")
    base, comparable = LFC_SCALES[scale]
    e = np.asarray(estimate, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    if e.size != t.size:
        raise ValueError(f"estimate has length {e.size}, truth {t.size}")
    ok = np.isfinite(e) & np.isfinite(t)
    e, t = e[ok], t[ok]
    t_base = t / np.log(base)  # the truth in the estimate's log base
    out = dict(scale=scale, comparable=comparable, n=int(e.size), pearson=np.nan, slope=np.nan,
               intercept=np.nan, sign_agreement=np.nan, bias=np.nan, rmse=np.nan,
               magnitude_error=np.nan, bias_sign=np.nan)  # fmt: skip
    if e.size == 0:
        return out
    nz = t != 0
    if nz.any():
        out["sign_agreement"] = float(np.mean(np.sign(e[nz]) == np.sign(t[nz])))
    if comparable:
        theta = e * np.log(base)  # θ̂ in natural-log units
        out["bias"] = float(np.mean(theta - t))
        out["rmse"] = float(np.sqrt(np.mean((theta - t) ** 2)))
        mag = float(np.mean(np.sign(t) * theta - np.abs(t)))
    else:
        mag = float(np.mean(np.sign(t_base) * e - np.abs(t_base)))
    out["magnitude_error"] = mag
    out["bias_sign"] = float(np.sign(mag))
    if e.size >= 2 and np.ptp(t_base) > 0:
        tc = t_base - t_base.mean()
        slope = float(np.dot(tc, e - e.mean()) / np.dot(tc, tc))
        out["slope"] = slope
        out["intercept"] = float(e.mean() - slope * t_base.mean())
        if np.ptp(e) > 0:
            out["pearson"] = float(np.corrcoef(e, t_base)[0, 1])
    return out


def replicate_interval(values, level: float = 0.95, method: str = "t") -> dict:
    """Mean over replicates and its ``level`` interval (the module docstring).

    Parameters
    ----------
    values : array_like of float
        One value per replicate; NaN (e.g. an observed FDR without discoveries) is dropped.
    level : float
        Coverage in (0, 1).
    method : {"t", "percentile"}
        Student-t interval of the mean (n ≥ 2) or the empirical quantiles (n ≥ 3).

    Returns
    -------
    dict
        ``mean``, ``lo``, ``hi`` (NaN where n is too small) and ``n`` (finite values).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method not in ("t", "percentile"):
        raise ValueError(f"method must be 't' or 'percentile', got {method!r}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = int(x.size)
    out = dict(mean=float(x.mean()) if n else np.nan, lo=np.nan, hi=np.nan, n=n)
    if method == "t" and n >= 2:
        half = stats.t.ppf(0.5 + level / 2.0, n - 1) * x.std(ddof=1) / np.sqrt(n)
        out.update(lo=out["mean"] - half, hi=out["mean"] + half)
    elif method == "percentile" and n >= 3:
        lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
        out.update(lo=float(lo), hi=float(hi))
    return out
