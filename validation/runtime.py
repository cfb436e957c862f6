"""Time and peak memory against cells, genes and subjects, with the R tools in the same run.

Each axis (``cells``, ``genes``, ``subjects``) varies one size of the config's ``base`` point
and keeps the other two; a point shared by several axes is measured once. The data of a point
are simulated by :func:`pyflashmm.simulate_rnaseq` (``n_samples`` = subjects, nested in two
treatment arms, ``n_clusters`` cell types). Tools and what is timed:

* ``pyflashmm_sumstats``: :func:`pyflashmm.summary_stats` of the sparse counts with
  log2(1 + y) on the fly, design ``~ 0 + log(libsize) + cls + cls:trt``, random ``sam``;
* ``pyflashmm_lmm``: :func:`pyflashmm.lmm` (REML) of all genes on those statistics;
* ``pyflashmm_nbglm``: :func:`pyflashmm.pseudobulk` (sam × cls) followed by
  :func:`pyflashmm.nbglm` with ``~ cls + trt`` (DESeq2's defaults);
* ``statsmodels_mixedlm``: ``MixedLM(...).fit(reml=True)`` (default optimiser) of the same LMM
  on ``statsmodels_genes`` genes, scaled linearly to all genes (genes are fitted one by one);
* ``flashmm``: ``FLASHMM::lmm`` on the same summary statistics (``validation/R/flashmm_lmm.R``),
  on at most ``flashmm_max_genes`` genes, scaled linearly;
* ``lme4``: ``lme4::lmer`` of the same LMM (``validation/R/lme4_time.R``) on ``lme4_genes``
  genes, scaled linearly;
* ``deseq2``, ``glmgampoi``: ``DESeq()`` (on at most ``deseq2_max_genes`` genes, scaled) and
  ``glm_gp()`` on the same pseudobulk counts (``validation/R/deseq2_glmgampoi_time.R``, the
  script ``benchmarks/bench_nbglm.py`` runs too).

Python tools: median of ``repeats`` calls after a warm-up call (Numba's compilation
excluded), except statsmodels (one timed pass over its genes, no warm-up: nothing to
compile). ``peak_mem_mb`` is the peak RSS increase during the call (:mod:`validation.measure`).
R tools: the seconds R measures around the fit (start-up, package loading and reading the
inputs excluded), one run; ``peak_mem_mb`` is the peak RSS of the whole R process. They are
``skipped`` (with the reason in ``note``) in the ``tiny`` variant, or when Rscript or a
package is missing.

The cell-level NB GLM is not timed here: ``benchmarks/bench_nbglm.py`` times it against
PyDESeq2, DESeq2 and glmGamPoi (500 genes × 20,000 cells).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm

import pyflashmm as fm
from validation import r_tools
from validation.measure import measure_call
from validation.provenance import REPO_ROOT, write_table

NAME = "runtime"
SOURCES = ("measure", "r_tools", "provenance")
#: other files that the results depend on (part of the stamp): the R scripts it runs
DATA = tuple(str(p.relative_to(REPO_ROOT)) for p in r_tools.SCRIPTS.values())


def environment(config: dict) -> dict:
    """What the run depends on beyond code and config: which R anchors can run (stamped, so
    installing R or FLASHMM later makes the results out of date)."""
    return {"r_tools": r_availability(config)}


LMM_FIXED = "~ 0 + log(libsize) + cls + cls:trt"
LME4_FORMULA = "y ~ 0 + log(libsize) + cls + cls:trt + (1 | sam)"
NB_FIXED = "~ cls + trt"
AXES = ("cells", "genes", "subjects")
TOOLS = ("pyflashmm_sumstats", "pyflashmm_lmm", "pyflashmm_nbglm", "statsmodels_mixedlm",
         "flashmm", "lme4", "deseq2", "glmgampoi")  # fmt: skip
_SIZE = {"cells": "n_cells", "genes": "n_genes", "subjects": "n_subjects"}


def axis_points(cfg: dict) -> list[tuple[str, dict]]:
    """``(axis, point)`` for every value of every axis; a point is the ``base`` sizes with the
    axis' size replaced (``n_cells``, ``n_genes``, ``n_subjects``)."""
    base = {"n_cells": int(cfg["base"]["cells"]), "n_genes": int(cfg["base"]["genes"]),
            "n_subjects": int(cfg["base"]["subjects"])}  # fmt: skip
    out = []
    for axis in AXES:
        for v in cfg[axis]:
            point = {**base, _SIZE[axis]: int(v)}
            if point["n_cells"] < 2 * point["n_subjects"]:
                raise ValueError(f"{axis}: {point} needs at least 2 cells per subject")
            out.append((axis, point))
    return out


def _pseudobulk_design(counts, obs):
    pb, groups = fm.pseudobulk(counts, obs, by=["sam", "cls"])
    arm = obs.groupby("sam", observed=True)["trt"].first()
    groups["trt"] = groups["sam"].map(arm).astype(str)
    groups["cls"] = "c" + groups["cls"].astype(str)  # a factor in R, whatever the labels
    X = fm.design(groups, NB_FIXED).X_frame()
    return pb, groups, X


def _nbglm(counts, obs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pb, _, X = _pseudobulk_design(counts, obs)
        return fm.nbglm(pb, X)


def _statsmodels(y, X, groups):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in range(y.shape[1]):
            sm.MixedLM(y[:, g], X, groups=groups).fit(reml=True)


def measure_point(point: dict, cfg: dict, seed: np.random.SeedSequence,
                  r_skip: dict[str, str | None]) -> list[dict]:  # fmt: skip
    """One row per tool at one point (``axis`` filled in by the caller)."""
    G, reps = point["n_genes"], int(cfg["repeats"])
    sim = fm.simulate_rnaseq(
        n_genes=G,
        n_cells=point["n_cells"],
        n_samples=point["n_subjects"],
        n_clusters=int(cfg["n_clusters"]),
        rng=np.random.default_rng(seed),
    )
    counts, obs = sim.counts, sim.obs
    dsg = fm.design(obs, LMM_FIXED, random="sam")
    X = dsg.X_frame()
    rows = []

    def row(tool, seconds, peak, repeats, note, status="ok"):
        rows.append({"tool": tool, **point, "seconds": seconds, "peak_mem_mb": peak,
                     "repeats": repeats, "status": status, "note": note})  # fmt: skip

    def stats_fn():
        return fm.summary_stats(counts, X, dsg.Z, dsg.d, transform="log2p1", progress=False)

    t, m = measure_call(stats_fn, reps)
    row("pyflashmm_sumstats", t, m, reps, "sparse CSR counts, log2(1 + y) on the fly")
    stats = stats_fn()
    # FLASHMM's semantics (no refit of boundary genes), the fit FLASHMM's timings are of
    t, m = measure_call(lambda: fm.lmm(stats, nonneg=False, warn=False, progress=False), reps)
    row("pyflashmm_lmm", t, m, reps, "REML, all genes, on the summary statistics")
    t, m = measure_call(lambda: _nbglm(counts, obs), reps)
    row("pyflashmm_nbglm", t, m, reps, f"pseudobulk (sam x cls) + nbglm {NB_FIXED}")

    k = min(int(cfg["statsmodels_genes"]), G)
    y = np.log2(1.0 + counts[:, :k].toarray())
    Xa, groups = X.to_numpy(), obs["sam"].to_numpy()
    t, m = measure_call(lambda: _statsmodels(y, Xa, groups), 1, warmup=False)
    row("statsmodels_mixedlm", t * G / k, m, 1,
        f"REML, default optimiser, timed on {k} genes, scaled to {G}")  # fmt: skip

    r_note = "peak = whole R process; R start-up and input reading not timed"
    if r_skip["flashmm"] is None:
        sub = min(int(cfg["flashmm_max_genes"]), G)
        res = r_tools.flashmm_lmm(stats.subset_genes(slice(0, sub)) if sub < G else stats)
        row(
            "flashmm",
            res.seconds * G / sub,
            res.peak_mem_mb,
            1,
            f"lmm() on the same summary statistics, {sub} genes scaled to {G}; {r_note}",
        )
    else:
        row("flashmm", np.nan, np.nan, 0, r_skip["flashmm"], "skipped")
    if r_skip["lme4"] is None:
        k4 = min(int(cfg["lme4_genes"]), G)
        y4 = np.log2(1.0 + counts[:, :k4].toarray())
        t, m = r_tools.lme4_fits(y4, obs[["sam", "cls", "trt", "libsize"]], LME4_FORMULA)
        row("lme4", t * G / k4, m, 1, f"lmer REML, timed on {k4} genes, scaled to {G}; {r_note}")
    else:
        row("lme4", np.nan, np.nan, 0, r_skip["lme4"], "skipped")
    if r_skip["deseq2"] is None:
        pb, groups_pb, _ = _pseudobulk_design(counts, obs)
        sub = min(int(cfg["deseq2_max_genes"]), G)
        t_de, t_gp, m = r_tools.deseq2_glmgampoi(pb, groups_pb, sub)
        both = "peak of the R process running DESeq2 then glmGamPoi"
        row(
            "deseq2",
            t_de * G / sub,
            m,
            1,
            f"DESeq() {NB_FIXED} on the same pseudobulk, {sub} genes scaled to {G}; {both}",
        )
        row("glmgampoi", t_gp, m, 1, f"glm_gp() on the same pseudobulk, all genes; {both}")
    else:
        for tool in ("deseq2", "glmgampoi"):
            row(tool, np.nan, np.nan, 0, r_skip["deseq2"], "skipped")
    return rows


def r_availability(cfg: dict) -> dict[str, str | None]:
    """Per R anchor ``None`` (run it) or the note of its ``skipped`` rows."""
    if not cfg.get("r_tools", True):
        return dict.fromkeys(("flashmm", "lme4", "deseq2"), f"{cfg['variant']} variant")
    return {"flashmm": r_tools.r_unavailable("FLASHMM"), "lme4": r_tools.r_unavailable("lme4"),
            "deseq2": r_tools.r_unavailable("DESeq2", "glmGamPoi")}  # fmt: skip


def run(config: dict, *, results_dir: Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """Measure every point (sequentially: timings need a quiet machine, so ``workers`` is not
    used) and write ``runtime.csv`` to ``results_dir``; returns its path."""
    from tqdm.auto import tqdm

    pts = axis_points(config)
    unique = list(dict.fromkeys(tuple(p.values()) for _, p in pts))
    seeds = dict(zip(unique, np.random.SeedSequence(config["seed"]).spawn(len(unique)),
                     strict=True))  # fmt: skip
    r_skip = r_availability(config)
    done: dict[tuple, list[dict]] = {}
    rows = []
    for axis, point in tqdm(pts, desc="runtime", disable=not progress, leave=False):
        key = tuple(point.values())
        if key not in done:
            done[key] = measure_point(point, config, seeds[key], r_skip)
        rows += [{"tool": r["tool"], "axis": axis, **{k: v for k, v in r.items() if k != "tool"}}
                 for r in done[key]]  # fmt: skip
    table = pd.DataFrame(rows)
    return [write_table(table, Path(results_dir) / "runtime.csv", seed=config["seed"])]
