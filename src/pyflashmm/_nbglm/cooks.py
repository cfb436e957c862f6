"""Cook's distances of a fitted gene block, summarised per gene (DESeq2's ``calculateCooksDistance``
and the summaries ``results()`` and ``replaceOutliers`` use).

D_ij = r²_ij/p · h_ij/(1 − h_ij)² with r² = (y − μ)²/(μ + α̃μ²), α̃ DESeq2's robust moment
dispersion (floored at 0.04; ``_kernels.nb_cooks``). The cutoff is F_{0.99}(p, m − p).
Only samples in design rows with ≥ 3 replicates count for the p-value filter; the G×m
distances are formed only for genes whose outliers may be replaced.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pyflashmm._kernels import nb_cooks as _kc
from pyflashmm._kernels.nb_layout import divide_cols
from pyflashmm._nbglm.count_block import CountBlock
from pyflashmm._nbglm.irls import GlmBlockFit
from pyflashmm._nbglm.layout import DesignLayout
from pyflashmm._nbglm.r_stats import trimmed_mean

#: minmu of the genes refitted after outlier replacement (DESeq2's ``refitWithoutOutliers``
#: re-estimates them with its default)
REFIT_MINMU = 0.5

#: (trim, scale) of the trimmed variance for design rows of ≤ 3.5, ≤ 23.5 and more samples
_TRIMS = np.array([1 / 3, 1 / 4, 1 / 8])
_SCALES = np.array([2.04, 1.86, 1.51])


def robust_moment_dispersion(blk: CountBlock, sf, layout: DesignLayout, base_mean):
    """DESeq2's robust method-of-moments dispersion α̃ = max((v − μ̄)/μ̄², 0.04), v the largest
    trimmed variance of y/s over the design rows with ≥ 3 samples (all samples when none)."""
    three = layout.replicated(3)
    lab = layout.rows.lab
    if three.any():
        sets = [np.flatnonzero(lab == lv) for lv in np.unique(lab[three])]
    else:
        sets = [np.arange(blk.n_samples)]
    sizes = np.array([c.size for c in sets])
    k = np.where(sizes <= 3.5, 0, np.where(sizes <= 23.5, 1, 2))
    trims = _TRIMS[k] if three.any() else np.array([1 / 8])
    scales = _SCALES[k] if three.any() else np.array([1.51])
    if sizes.max() >= 1000:
        # many samples: one kernel over all sets, the trimmed ranks selected (zeros counted)
        off = np.zeros(len(sets) + 1, np.int64)
        off[1:] = np.cumsum(sizes)
        cols = np.concatenate(sets).astype(np.int64)
        v = _kc.robust_var_rows(blk.csr, sf, _kc.SampleSets(cols, off, trims, scales))
    else:  # few samples: numpy's batched sorts are faster
        Qn = divide_cols(blk.dense(), sf)
        v = None
        for cols, trim, scale in zip(sets, trims, scales, strict=True):
            sub = Qn[:, cols]
            cm = trimmed_mean(sub, trim, axis=1)
            ve = scale * trimmed_mean((sub - cm[:, None]) ** 2, trim, axis=1)
            v = ve if v is None else np.maximum(v, ve)
    mm = base_mean
    return np.maximum((v - mm) / mm**2, 0.04)


class CooksSummary(NamedTuple):
    """Cook's distances of a gene block, summarised per gene.

    ``max``: the largest distance over samples in design rows with ≥ 3 replicates (NaN when
    there are none or m ≤ p); ``max_nonrep``: the same with replaceable samples counted as 0;
    ``any_above``: some distance exceeds the cutoff; ``n_above_argmax``: the number of counts
    above the count at the largest distance; ``rows``: the full distances (k × m) of the genes
    with ``any_above`` when outliers can be replaced, else None.
    """

    max: np.ndarray
    max_nonrep: np.ndarray
    any_above: np.ndarray
    n_above_argmax: np.ndarray
    rows: np.ndarray | None


def cooks_block(
    blk: CountBlock,
    sf,
    layout: DesignLayout,
    classes,
    glm: GlmBlockFit,
    alpha,
    base_mean,
    replaceable,
    cutoff,
) -> CooksSummary:
    """The :class:`CooksSummary` of a block fitted by ``glm`` at dispersions ``alpha``;
    ``replaceable`` marks the samples whose outlying counts may be replaced."""
    m, p = layout.m, layout.p
    use = layout.replicated(3)
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    robust = robust_moment_dispersion(blk, sf, layout, base_mean)
    mx, mx_nonrep, mx_all, n_above = _kc.cooks_summary(
        blk.csr, classes, glm.fitted, alpha, robust, float(p), use, ~replaceable
    )
    if not (m > p and use.any()):
        mx[:] = np.nan
        mx_nonrep[:] = np.nan
    any_above = mx_all > cutoff
    rows = None
    if replaceable.any() and any_above.any():
        sel = np.flatnonzero(any_above)
        f = glm.fitted
        fitted = f._replace(
            mu=np.ascontiguousarray(f.mu[sel]),
            wmu=np.ascontiguousarray(f.wmu[sel]),
            hat=np.ascontiguousarray(f.hat[sel]),
        )
        rows = _kc.cooks_matrix(
            blk.subset(sel).csr, classes, fitted, alpha[sel], robust[sel], float(p)
        )
    return CooksSummary(mx, mx_nonrep, any_above, n_above, rows)
