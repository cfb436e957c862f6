"""Wall time and peak memory of a Python call or of a child process.

* A Python call: ``measure_call(fn, repeats)`` makes one warm-up call (Numba compilation and
  caches excluded), then ``repeats`` timed calls; the time is their median. Memory is the
  **peak memory increase** during a call, max over the calls, from three witnesses on Linux:
  the kernel's high-water mark ``VmHWM`` (reset to the current RSS through
  ``/proc/self/clear_refs`` before each call and read after it); the RSS sampled every 0.5 ms
  by a background thread (some kernels lose from ``VmHWM`` memory that was unmapped before it
  is read); and, with glibc, the bytes the allocator has handed out (``mallinfo2``), sampled
  with the RSS. The last is needed because an allocation served from memory the allocator
  freed earlier but kept resident (common after a long run, e.g. after Numba compiled many
  functions) raises neither RSS counter; ``malloc_trim(0)`` before each call returns such
  memory to the kernel, so the RSS witnesses see most of it too. Elsewhere memory is NaN.
* A child process: ``run_command(argv)`` reaps the child with ``os.wait4`` and reports its
  ``ru_maxrss``, the **peak RSS of the whole process** (for R: R, its packages and its data).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]  # fmt: skip


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None


_LIBC = _glibc()


def _malloc_in_use_kb() -> float:
    """Bytes handed out by glibc's malloc (arenas + mmapped chunks), in kB; 0 without glibc."""
    if _LIBC is None:
        return 0.0
    info = _LIBC.mallinfo2()
    return (info.uordblks + info.hblkhd) / 1024


def _status_kb(field: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return np.nan


def peak_rss_supported() -> bool:
    """Whether this process can reset and read its peak RSS (Linux ≥ 4.0 with /proc)."""
    try:
        _CLEAR_REFS.write_text("5")
        return not np.isnan(_status_kb("VmHWM"))
    except OSError:
        return False


class _RssSampler:
    """Polls the resident set size (``/proc/self/statm``) and the allocator's bytes in use every
    ``interval`` seconds in a background thread and keeps the largest increase of each (kB)."""

    def __init__(self, interval: float = 5e-4):
        self.interval = interval
        self.peak_kb = 0.0
        self.malloc_start_kb = 0.0
        self.malloc_peak_kb = 0.0
        self._stop = threading.Event()
        self._page_kb = os.sysconf("SC_PAGE_SIZE") / 1024
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss_kb(self) -> float:
        with open("/proc/self/statm") as fh:
            return float(fh.read().split()[1]) * self._page_kb

    def _sample(self) -> None:
        self.peak_kb = max(self.peak_kb, self._rss_kb())
        self.malloc_peak_kb = max(self.malloc_peak_kb, _malloc_in_use_kb())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    @property
    def malloc_increase_kb(self) -> float:
        return self.malloc_peak_kb - self.malloc_start_kb

    def __enter__(self):
        self.peak_kb = self._rss_kb()
        self.malloc_start_kb = self.malloc_peak_kb = _malloc_in_use_kb()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def measure_call(fn: Callable[[], object], repeats: int, *, warmup: bool = True):
    """(median seconds over ``repeats`` calls, peak RSS increase in MB, max over the calls).

    With ``warmup`` an untimed call comes first (compilation and caches excluded).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup:
        fn()
    mem = peak_rss_supported()
    times, peaks = [], []
    for _ in range(repeats):
        if mem:
            gc.collect()
            if _LIBC is not None:
                _LIBC.malloc_trim(0)
            _CLEAR_REFS.write_text("5")
            before = _status_kb("VmRSS")
        sampler = _RssSampler() if mem else contextlib.nullcontext()
        with sampler:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if mem:
            rss_increase = max(_status_kb("VmHWM"), sampler.peak_kb) - before
            peaks.append(max(rss_increase, sampler.malloc_increase_kb, 0.0) / 1024)
    return float(np.median(times)), float(max(peaks)) if peaks else np.nan


@dataclass(frozen=True)
class CommandResult:
    """A finished child process: exit code, its output and its peak RSS (MB)."""

    returncode: int
    stdout: str
    stderr: str
    peak_mem_mb: float


def run_command(argv: list[str], *, timeout: float | None = None) -> CommandResult:
    """Run ``argv`` to completion; ``peak_mem_mb`` is the child's ``ru_maxrss`` (whole process).

    A child still running after ``timeout`` seconds is killed (return code < 0).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return CommandResult(proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024)
