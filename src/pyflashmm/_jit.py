"""The one Numba wrapper: every kernel is compiled through :func:`njit` here.

Options are fixed in one place: ``cache=True`` (compiled code is reused across sessions),
``nogil=True`` (kernels can overlap I/O threads), and no ``fastmath`` (it assumes no NaN/Inf
and breaks the NaN handling the result arrays rely on). ``parallel=True`` is opt-in per kernel,
for the outer loops over genes or cell blocks written with :data:`prange`.
"""

from __future__ import annotations

import numba

prange = numba.prange


def njit(*args, parallel: bool = False, **kwargs):
    """``numba.njit`` with the project's options (cache, nogil, no fastmath)."""
    options = {"cache": True, "nogil": True, "fastmath": False, "parallel": parallel}
    options.update(kwargs)
    if args and callable(args[0]):
        return numba.njit(**options)(args[0])
    return numba.njit(*args, **options)


def num_threads() -> int:
    """The number of threads Numba kernels use (also used to size thread pools elsewhere)."""
    return numba.get_num_threads()
