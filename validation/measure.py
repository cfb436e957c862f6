"""Wall time and peak memory of a Python call or of a child process.

* A Python call: ``measure_call(fn, repeats)`` makes one warm-up call (Numba compilation and
  caches excluded), then ``repeats`` timed calls; the time is their median. Memory is the
  **peak resident set size increase** during a call, max over the calls: on Linux the kernel's
  high-water mark ``VmHWM`` is reset to the current RSS through ``/proc/self/clear_refs``
  before each call and read after it, peak = VmHWM − RSS before the call. Elsewhere it is NaN.
* A child process: ``run_command(argv)`` reaps the child with ``os.wait4`` and reports its
  ``ru_maxrss``, the **peak RSS of the whole process** (for R: R, its packages and its data).
"""

from __future__ import annotations

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
            _CLEAR_REFS.write_text("5")
            before = _status_kb("VmRSS")
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if mem:
            peaks.append(max(_status_kb("VmHWM") - before, 0.0) / 1024)
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
