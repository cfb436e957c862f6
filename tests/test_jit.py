"""The thread settings of :mod:`pyflashmm._jit`."""

from threadpoolctl import threadpool_info

from pyflashmm._jit import numba_parallel_only


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_numba_parallel_only_limits_blas_to_one_thread_and_restores():
    before = _blas_threads()

    @numba_parallel_only
    def inside():
        return _blas_threads()

    for _ in range(2):  # the second call reuses the cached controller
        assert all(n == 1 for n in inside())
        assert _blas_threads() == before
