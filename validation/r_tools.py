"""The R anchors of the runtime experiment: FLASHMM, lme4, DESeq2 and glmGamPoi, run by Rscript.

Each runner writes its inputs to a temporary directory, runs an R script through
:func:`validation.measure.run_command` and returns the seconds R itself measured around the
fit (``system.time``: R's start-up, package loading and input reading excluded) and the peak
RSS of the whole R process (MB). The R scripts are the benchmarks' own
(``benchmarks/flashmm_lmm.R``; the DESeq2 + glmGamPoi script of ``benchmarks/bench_nbglm.py``)
and ``validation/lme4_time.R``. Packages are looked up in R's library path, so an existing
``R_LIBS`` is honoured.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import bench_lmm, bench_nbglm
from validation.measure import run_command

HERE = Path(__file__).resolve().parent
#: a child R process is killed after this many seconds
R_TIMEOUT = 1800.0


@functools.cache
def r_unavailable(*packages: str) -> str | None:
    """``None`` when Rscript runs and loads every package, else why not (a note)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "Rscript not found"
    check = "; ".join(f"library({p})" for p in packages)
    res = run_command([rscript, "-e", f"suppressPackageStartupMessages({{{check}}})"],
                      timeout=120)  # fmt: skip
    if res.returncode != 0:
        return f"R cannot load {', '.join(packages)}"
    return None


def _check(res, label: str) -> None:
    if res.returncode != 0:
        raise RuntimeError(f"{label} failed ({res.returncode}): {res.stderr[-2000:]}")


def _last_numbers(res, label: str, k: int) -> list[float]:
    _check(res, label)
    return [float(v) for v in res.stdout.split()[-k:]]


def flashmm_lmm(stats, method: str = "REML") -> tuple[float, float]:
    """FLASHMM::lmm on summary statistics ``stats``: (seconds, peak MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        bench_lmm.write_flashmm_inputs(stats, Path(tmp), method)
        res = run_command(["Rscript", str(bench_lmm.HERE / "flashmm_lmm.R"), tmp],
                          timeout=R_TIMEOUT)  # fmt: skip
        _check(res, "FLASHMM")
        seconds = float((Path(tmp) / "flashmm_time.txt").read_text())
    return seconds, res.peak_mem_mb


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
        res = run_command(["Rscript", str(HERE / "lme4_time.R"), tmp], timeout=R_TIMEOUT)
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
        (d / "b.R").write_text(bench_nbglm.R_SCRIPT)
        res = run_command(["Rscript", str(d / "b.R"), str(d / "y.csv"), str(d / "cd.csv"), "0",
                           str(int(n_genes_deseq2))], timeout=R_TIMEOUT)  # fmt: skip
        t_deseq2, t_glmgampoi = _last_numbers(res, "DESeq2/glmGamPoi", 2)
    return t_deseq2, t_glmgampoi, res.peak_mem_mb
