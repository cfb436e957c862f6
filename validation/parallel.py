"""Replicates spread over worker processes, with results independent of the worker count.

Replicate ``i`` always gets the ``i``-th child of ``SeedSequence(seed)``, whichever process
runs it and in whatever order, and results are returned in replicate order. Workers run
Numba with one thread each (the processes are the parallelism); with ``workers=1`` the
replicates run in this process and Numba keeps its threads.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm.auto import tqdm


def replicate_seeds(seed: int, n: int) -> list[np.random.SeedSequence]:
    """The ``n`` child seed sequences of ``SeedSequence(seed)``, one per replicate."""
    return np.random.SeedSequence(seed).spawn(n)


def _init_worker() -> None:
    import numba

    numba.set_num_threads(1)


def map_replicates(fn: Callable, tasks: Sequence, *, workers: int = 1, progress: bool = True,
                   desc: str = "") -> list:  # fmt: skip
    """``[fn(t) for t in tasks]``, over ``workers`` processes, with a progress bar on stderr.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled for the worker processes).
    tasks : sequence
        One task per replicate, each carrying its own seed (:func:`replicate_seeds`).
    workers : int
        Worker processes; 1 runs the tasks in this process.
    progress : bool
        Show a progress bar on stderr.
    desc : str
        Label of the progress bar.

    Returns
    -------
    list
        ``fn(task)`` for every task, in task order (independent of ``workers``).
    """
    workers = max(1, min(int(workers), len(tasks) or 1))
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False)
    try:
        if workers == 1:
            out = []
            for t in tasks:
                out.append(fn(t))
                bar.update()
            return out
        ctx = multiprocessing.get_context("spawn")
        env_threads = os.environ.get("NUMBA_NUM_THREADS")
        os.environ["NUMBA_NUM_THREADS"] = "1"
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
                futures = [ex.submit(fn, t) for t in tasks]
                for f in futures:
                    f.add_done_callback(lambda _f: bar.update())
                return [f.result() for f in futures]
        finally:
            if env_threads is None:
                os.environ.pop("NUMBA_NUM_THREADS", None)
            else:
                os.environ["NUMBA_NUM_THREADS"] = env_threads
    finally:
        bar.close()
