"""The one Numba wrapper: every kernel is compiled through :func:`njit` here, and the thread
settings the kernels run under.

Options are fixed in one place: ``cache=True`` (compiled code is reused across sessions),
``nogil=True`` (kernels can overlap I/O threads), no ``fastmath`` (it assumes no NaN/Inf
and breaks the NaN handling the result arrays rely on), and ``error_model="numpy"``: a float
division by zero gives ±inf or NaN as in IEEE arithmetic instead of raising
``ZeroDivisionError`` (an integer division by zero gives 0; no kernel divides by a value it
has not checked), so a degenerate gene ends with NaN results rather than aborting the
whole batch, and loops that divide carry no per-element check, which lets LLVM vectorise
them. ``parallel=True`` is opt-in per kernel, for the outer loops over genes or cell blocks
written with :data:`prange`.
"""

from __future__ import annotations

import functools
import sys

import numba
from threadpoolctl import ThreadpoolController

prange = numba.prange


def njit(*args, parallel: bool = False, **kwargs):
    """``numba.njit`` with the project's options (cache, nogil, no fastmath, numpy errors)."""
    options = {
        "cache": True,
        "nogil": True,
        "fastmath": False,
        "error_model": "numpy",
        "parallel": parallel,
    }
    options.update(kwargs)
    if args and callable(args[0]):
        return numba.njit(**options)(args[0])
    return numba.njit(*args, **options)


def num_threads() -> int:
    """The number of threads Numba kernels use (also used to size thread pools elsewhere)."""
    return numba.get_num_threads()


#: (number of imported modules, controller) of the last scan for thread-pool libraries
_controller: tuple[int, ThreadpoolController] | None = None


def _blas_controller() -> ThreadpoolController:
    """A cached ``ThreadpoolController``: building one scans the loaded shared libraries (about
    1 ms), so it is reused, and rebuilt only when modules were imported since (a new BLAS
    library comes with a new extension module)."""
    global _controller
    n_modules = len(sys.modules)
    if _controller is None or _controller[0] != n_modules:
        _controller = (n_modules, ThreadpoolController())
    return _controller[1]


def numba_parallel_only(func):
    """Run ``func`` with BLAS limited to one thread.

    The parallelism of the model fits is Numba's, over genes; the small BLAS products between
    kernels gain nothing from BLAS threads, which then only oversubscribe the cores (the LMM
    benchmark (a) ran 2.3× and the NB GLM pseudobulk 1.9× slower with OpenBLAS's default).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _blas_controller().limit(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper
