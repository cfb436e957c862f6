"""Per-gene status codes, one table for every model family.

Kernels return an integer code per gene (they cannot raise mid-batch); the Python layer maps it
to the name in :data:`STATUS_NAMES` for the result's ``status`` field. A code means the same
thing in every family that uses it.

========================  ====================================================================
name                      meaning
========================  ====================================================================
``ok``                    converged
``boundary``              converged with a variance component held at 0 (``nonneg=True``)
``max_iter``              the iteration limit was reached (the last iterate is kept)
``zero_variance``         the gene lies in the span of X (e.g. all zeros): no fit
``not_positive_definite`` V or XᵀV⁻¹X is not positive definite: no fit
``line_search_failed``    no step raised the likelihood (the last iterate is kept)
``singular_information``  the information matrix of θ is singular: no fit
``pd_boundary``           the maximum lies on the edge of the positive-definite region
``all_zero``              every count is zero: no fit
``one_group``             every non-zero count lies in one group of the random effect (NB
                          mixed model: σ² has no finite maximum): no fit
``separation``            a coefficient diverges (NB mixed model: the counts separate design
                          rows, e.g. all zero in one arm; the last iterate is kept, no test)
========================  ====================================================================

The kernels read the codes as compile-time constants: after changing a value here, clear
Numba's cache (``__pycache__/*.nbi``) so that cached kernels are recompiled.
"""

from __future__ import annotations

OK = 0
BOUNDARY = 1
MAX_ITER = 2
ZERO_VARIANCE = 3
NOT_POSITIVE_DEFINITE = 4
LINE_SEARCH_FAILED = 5
SINGULAR_INFORMATION = 6
PD_BOUNDARY = 7
ALL_ZERO = 8
ONE_GROUP = 9
SEPARATION = 10

#: names of the status codes, indexed by code
STATUS_NAMES = (
    "ok",
    "boundary",
    "max_iter",
    "zero_variance",
    "not_positive_definite",
    "line_search_failed",
    "singular_information",
    "pd_boundary",
    "all_zero",
    "one_group",
    "separation",
)
