"""The R anchors: FLASHMM, lme4, DESeq2 and glmGamPoi, run by Rscript on the scripts of ``R/``.

Every piece of R the repository runs (outside the fixture generators of ``tests/data``, which
stay next to their fixtures) is a script in ``validation/R/``, called as
``Rscript <script> args...``. This module runs them for the runtime experiment, and
``benchmarks/bench_lmm.py`` imports it; ``benchmarks/bench_nbglm.py`` and
``benchmarks/bench_simulate.py`` call their scripts by path.

Each runner writes its inputs to a temporary directory, runs an R script through
:func:`validation.measure.run_command` and returns the seconds R itself measured around the
fit (``system.time``: R's start-up, package loading and input reading excluded) and the peak
RSS of the whole R process (MB). Packages are looked up in R's library path, so an existing
``R_LIBS`` is honoured; :func:`r_unavailable` says beforehand whether a script can run.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from validation.measure import run_command

#: the folder of the R scripts
R_DIR = Path(__file__).resolve().parent / "R"
#: the scripts the runtime experiment runs (part of its stamp)
SCRIPTS = {
    "check_packages": R_DIR / "check_packages.R",
    "flashmm_lmm": R_DIR / "flashmm_lmm.R",
    "lme4_time": R_DIR / "lme4_time.R",
    "deseq2_glmgampoi_time": R_DIR / "deseq2_glmgampoi_time.R",
}
#: a child R process is killed after this many seconds
R_TIMEOUT = 1800.0


@functools.cache
def r_unavailable(*packages: str) -> str | None:
    """``None`` when Rscript runs and loads every package, else why not (a note)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "Rscript not found"
    res = run_command([rscript, str(SCRIPTS["check_packages"]), *packages], timeout=120)
    if res.returncode != 0:
        return f"R cannot load {', '.join(packages)}"
    return None


def _check(res, label: str) -> None:
    if res.returncode != 0:
        raise RuntimeError(f"{label} failed ({res.returncode}): {res.stderr[-2000:]}")


def _last_numbers(res, label: str, k: int) -> list[float]:
    _check(res, label)
    return [float(v) for v in res.stdout.split()[-k:]]


def write_flashmm_inputs(stats, d: Path, method: str = "REML") -> None:
    """Write summary statistics ``stats`` to directory ``d`` in the layout ``flashmm_lmm.R``
    reads (C-order float64 little-endian dumps, ``XY``/``ZY`` gene-major, and ``meta.txt``)."""
    d = Path(d)
    for name in ("XX", "ZX", "ZZ"):
        np.ascontiguousarray(getattr(stats, name)).astype("<f8").tofile(d / f"{name}.bin")
    np.ascontiguousarray(stats.XY.T).astype("<f8").tofile(d / "XY.bin")
    np.ascontiguousarray(stats.ZY.T).astype("<f8").tofile(d / "ZY.bin")
    stats.Ynorm.astype("<f8").tofile(d / "Ynorm.bin")
    (d / "meta.txt").write_text(
        "p q G n d method\n"
        f"{stats.p} {stats.q} {stats.n_genes} {stats.n} "
        f"{'-'.join(map(str, stats.d))} {method}\n"
    )


class FlashmmRun(NamedTuple):
    """One run of ``FLASHMM::lmm``: its fit time, the R process' peak RSS and its estimates."""

    seconds: float
    peak_mem_mb: float
    theta: np.ndarray  # G × (K + 1), residual variance last
    coef: np.ndarray  # G × p


def flashmm_lmm(stats, method: str = "REML") -> FlashmmRun:
    """``FLASHMM::lmm`` on summary statistics ``stats``."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_flashmm_inputs(stats, d, method)
        res = run_command(["Rscript", str(SCRIPTS["flashmm_lmm"]), tmp], timeout=R_TIMEOUT)
        _check(res, "FLASHMM")
        seconds = float((d / "flashmm_time.txt").read_text())
        K1 = len(stats.d) + 1
        theta = np.fromfile(d / "flashmm_theta.bin", "<f8").reshape(stats.n_genes, K1)
        coef = np.fromfile(d / "flashmm_coef.bin", "<f8").reshape(stats.n_genes, stats.p)
    return FlashmmRun(seconds, res.peak_mem_mb, theta, coef)


def lme4_fits(y: np.ndarray, obs: pd.DataFrame, formula: str, method: str = "REML"):
    """lme4::lmer on each column of ``y`` (cells × genes): (seconds for all, peak MB).

    ``obs`` holds the formula's variables; every column but ``libsize`` is read as a factor.
    """
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.savetxt(d / "y.csv", np.atleast_2d(y.T).T, delimiter=",", fmt="%.17g")
        obs.astype({c: str for c in obs.columns if c != "libsize"}).to_csv(
            d / "obs.csv", index=False
        )
        (d / "spec.txt").write_text(f"{formula}\n{method}\n")
        res = run_command(["Rscript", str(SCRIPTS["lme4_time"]), tmp], timeout=R_TIMEOUT)
        (seconds,) = _last_numbers(res, "lme4", 1)
    return seconds, res.peak_mem_mb


def deseq2_glmgampoi(counts: np.ndarray, meta: pd.DataFrame, n_genes_deseq2: int):
    """DESeq2 (on the first ``n_genes_deseq2`` genes) and glmGamPoi (all genes) on pseudobulk
    ``counts`` (samples × genes) with design ``~ cls + trt`` (``meta`` columns, factors).

    Returns (DESeq2 seconds, glmGamPoi seconds, peak MB of the R process running both).
    """
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.savetxt(d / "y.csv", counts, fmt="%d", delimiter=",")
        meta[["cls", "trt"]].to_csv(d / "cd.csv", index=False)
        res = run_command(["Rscript", str(SCRIPTS["deseq2_glmgampoi_time"]), str(d / "y.csv"),
                           str(d / "cd.csv"), "0", str(int(n_genes_deseq2))],
                          timeout=R_TIMEOUT)  # fmt: skip
        t_deseq2, t_glmgampoi = _last_numbers(res, "DESeq2/glmGamPoi", 2)
    return t_deseq2, t_glmgampoi, res.peak_mem_mb
