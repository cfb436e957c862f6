"""Order statistics by selection (Hoare's quickselect) instead of sorting: a rank-k value, sums of
a range of ranks, the median and R's trimmed mean ``mean(x, trim=)`` = the mean of the values
of ranks ⌊n·trim⌋ .. n − ⌊n·trim⌋ − 1 (0-based), each O(n) on average.

Data with many copies of one value v (the zero counts of a gene) are handled as the entries
below v, a count of v and the entries above v, so only the entries that are not v are
selected.
"""

from __future__ import annotations

from pyflashmm._jit import njit


@njit
def select(a, lo, hi, k):
    """Reorder a[lo:hi] in place so that a[k] holds its rank-(k − lo) value, with
    a[lo:k] ≤ a[k] ≤ a[k+1:hi] (Hoare partitions around a median-of-three pivot)."""
    hi -= 1
    while hi > lo:
        x = a[lo]
        y = a[(lo + hi) // 2]
        z = a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
            if x > y:
                y = x
        i = lo
        j = hi
        while i <= j:
            while a[i] < y:
                i += 1
            while a[j] > y:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        # a[lo..j] ≤ pivot ≤ a[i..hi]; entries strictly between j and i equal the pivot
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@njit
def rank_sum(a, n, i0, i1):
    """Σ of the values of ranks i0..i1−1 among a[:n] (a is reordered, not sorted)."""
    if i0 >= i1:
        return 0.0
    if i0 > 0:
        select(a, 0, n, i0)
    if i1 < n:
        select(a, i0, n, i1 - 1)
    s = 0.0
    for i in range(i0, i1):
        s += a[i]
    return s


@njit
def median_inplace(a, n):
    """Median of a[:n] (n > 0; a is reordered): the middle value, or the mean of the two middle
    values, as ``np.median`` gives, without its copy of the data."""
    h = n // 2
    select(a, 0, n, h)
    if n % 2 == 1:
        return a[h]
    lo = a[0]
    for i in range(1, h):  # the largest of the lower half is the other middle value
        if a[i] > lo:
            lo = a[i]
    return (lo + a[h]) / 2.0


@njit
def trimmed_mean_parts(less, nl, c0, v, more, nm, lo, hi):
    """Trimmed mean (ranks lo..hi−1) of data given as its nl entries below v (``less``), c0
    copies of v and its nm entries above v (``more``); only the ranks inside lo..hi−1 are
    selected and summed. ``less`` and ``more`` are reordered."""
    s = rank_sum(less, nl, lo, min(hi, nl))
    k0 = max(lo, nl)
    k1 = min(hi, nl + c0)
    if k1 > k0:
        s += (k1 - k0) * v
    s += rank_sum(more, nm, max(lo, nl + c0) - nl - c0, hi - nl - c0)
    return s / (hi - lo)


@njit
def trimmed_mean_row(row, n_more_v, v, lo, hi, less, more):
    """Trimmed mean (ranks lo..hi−1) of ``row`` plus ``n_more_v`` further copies of v.

    Entries equal to v are counted; the entries below and above v are kept apart in the work
    arrays ``less`` and ``more`` (:func:`trimmed_mean_parts`).
    """
    n = row.shape[0]
    nl = 0
    nm = 0
    for j in range(n):  # branch-free: both slots written, the counts advance
        x = row[j]
        less[nl] = x
        more[nm] = x
        nl += x < v
        nm += x > v
    return trimmed_mean_parts(less, nl, n + n_more_v - nl - nm, v, more, nm, lo, hi)
