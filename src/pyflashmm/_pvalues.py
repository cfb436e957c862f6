"""Two-sided p-values of t statistics, evaluated in parallel threads.

``scipy.special.stdtr`` releases the GIL, so splitting a large array over threads scales; each
element is computed independently, so the result does not depend on the number of threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import special

from pyflashmm._jit import num_threads

_MIN_PER_THREAD = 50_000


def t_two_sided(t: np.ndarray, df) -> np.ndarray:
    """2·P(T_df > |t|) elementwise (NaN stays NaN); ``df`` a scalar or broadcastable array."""
    t = np.asarray(t, dtype=np.float64)
    neg = -np.abs(t)
    df = np.broadcast_to(np.asarray(df, dtype=np.float64), t.shape)
    out = np.empty_like(t)
    flat_out, flat_neg, flat_df = (
        out.reshape(-1),
        neg.reshape(-1),
        np.ascontiguousarray(df).reshape(-1),
    )
    n_threads = max(1, min(num_threads(), flat_neg.size // _MIN_PER_THREAD))
    bounds = np.linspace(0, flat_neg.size, n_threads + 1).astype(int)

    def work(i):
        a, b = bounds[i], bounds[i + 1]
        special.stdtr(flat_df[a:b], flat_neg[a:b], out=flat_out[a:b])

    if n_threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(work, range(n_threads)))
    return 2.0 * out
