"""The standard R comparators of the validation suite: pseudobulk and cell-level DE in R.

Pseudobulk (one pseudobulk sample per donor, or per donor × cell type), by
``R/pseudobulk_de.R`` (:func:`run_r_pseudobulk`):

``edger_ql``
    edgeR's quasi-likelihood pipeline: ``DGEList``, ``calcNormFactors`` (TMM),
    ``estimateDisp(design)``, ``glmQLFit(robust = TRUE)``, ``glmQLFTest(coef)``. No
    ``filterByExpr`` (every gene gets a p-value but the all-zero ones). ``log_fc``: edgeR's
    ``logFC``, the log2 fold change of the NB mean.
``limma_voom``
    ``calcNormFactors`` (TMM), ``voom(design)``, ``lmFit``, ``eBayes`` (``robust = FALSE``,
    no trend, as muscat), ``topTable(coef)``. ``log_fc``: the coefficient on voom's
    log2-CPM scale (a log2 fold change of normalised expression).
``deseq2_r``
    ``DESeqDataSetFromMatrix``, ``DESeq()`` with its defaults (median-of-ratios size factors,
    parametric dispersion trend, Wald test, Cook's-distance outlier handling: a gene flagged
    by Cook's distance has p-value NA and status ``cooks_outlier``),
    ``results(name = coef)``. ``log_fc``: DESeq2's MLE ``log2FoldChange`` (no shrinkage).

Cell level (the cells of one cell type, a subset of genes), by ``R/cell_mixed_models.R``
(:func:`run_r_cell_models`):

``glmmtmb``
    glmmTMB's NB GLMM, one per gene: ``count ~ group [+ covariates] +
    offset(log(size_factor)) + (1 | donor)``, ``family = nbinom2`` (Var = μ + μ²/θ), ML by the
    Laplace approximation; the Wald z p-value of ``group`` from ``summary``. ``log_fc``: the
    estimate / ln 2, a log2 fold change of the NB mean (the same model as
    :func:`pyflashmm.nbmm` with ``reml=False`` tested by ``nbmm_test(df="z")``).
``lmertest``
    lmerTest's LMM, one per gene, on y = log2(1 + count): ``y ~ log(libsize) + group
    [+ covariates] + (1 | donor)``, REML; the t test of ``group`` on Satterthwaite's df
    (lmerTest's ``summary``). ``log_fc``: the estimate, a difference of mean log2(1 + count)
    (not a log2 fold change of mean counts). The same model as :func:`pyflashmm.de` with
    ``fixed="~ log(libsize) + group"``, ``random="(1|donor)"``, ``df="satterthwaite"`` and
    ``nonneg=True`` (lme4 keeps σ_b² ≥ 0).

Every method returns a DataFrame indexed by gene with ``p_value``, ``log_fc``, ``se`` (NaN
where the method gives none: edgeR), ``status`` (``ok``, ``all_zero``, ``cooks_outlier``,
``warning: …``, ``failed: …``; the cell-level tables add ``df``) and ``.attrs["seconds"]``, the
elapsed seconds R measured around the method's fit of all genes (R's start-up, package loading
and input reading excluded), with ``.attrs["peak_mem_mb"]`` the peak RSS of the R process
running all requested methods (on every job of a ``_jobs`` call). As in
:mod:`validation.r_tools`, every script is run as ``Rscript <script> DIR [DIR ...]`` through
:func:`validation.measure.run_command`: the ``_jobs`` runners give one R process several data
sets (one folder each), so that the packages (DESeq2's ~7 s above all) load once.

A method that fails in R as a whole gives NaN p-values with status ``failed: <R's message>``;
R itself failing (Rscript missing, a package missing, the script stopping) raises
:class:`RuntimeError` with the reason. Callers check :func:`r_methods_unavailable` first (it
loads the packages in a separate R process, once per Python process: DESeq2 alone takes
~7 s); the runners do not repeat that check, the scripts themselves exit with a note when a
package does not load.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from validation.measure import run_command
from validation.r_tools import R_DIR, R_TIMEOUT, r_unavailable

#: the R packages each method loads
R_PACKAGES = {
    "edger_ql": ("edgeR",),
    "limma_voom": ("edgeR", "limma"),
    "deseq2_r": ("DESeq2",),
    "glmmtmb": ("glmmTMB",),
    "lmertest": ("lmerTest",),
}
PSEUDOBULK_METHODS = ("edger_ql", "limma_voom", "deseq2_r")
CELL_METHODS = ("glmmtmb", "lmertest")
SCRIPTS = {
    "pseudobulk_de": R_DIR / "pseudobulk_de.R",
    "cell_mixed_models": R_DIR / "cell_mixed_models.R",
}
#: the scripts' exit status when a method's package does not load
_NO_PACKAGE = 3


def r_methods_unavailable(methods: Sequence[str]) -> dict[str, str]:
    """The methods of ``methods`` that cannot run here, each with why (a note).

    Parameters
    ----------
    methods : sequence of str
        Keys of :data:`R_PACKAGES`.

    Returns
    -------
    dict
        method → note (``"Rscript not found"``, ``"R cannot load edgeR, limma"``); empty when
        every method can run.

    Raises
    ------
    ValueError
        An unknown method.
    """
    _check_methods(methods, tuple(R_PACKAGES))
    out = {}
    for m in methods:
        note = r_unavailable(*R_PACKAGES[m])
        if note is not None:
            out[m] = note
    return out


def _check_methods(methods, allowed) -> None:
    if isinstance(methods, str):
        raise TypeError(f"methods must be a sequence of method names; got the string {methods!r}")
    bad = [m for m in methods if m not in allowed]
    if bad or not len(methods):
        raise ValueError(f"methods: unknown {bad} or none given; choose from {list(allowed)}")


def _write_table(df: pd.DataFrame, d: Path, name: str) -> None:
    """``df`` to ``d/name`` (CSV), the names of its non-numeric columns (R factors) to
    ``d/factors.txt`` and the level order of its categorical columns to ``d/levels.csv``
    (other factors take R's sorted order)."""
    df = df.reset_index(drop=True)
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c].dtype)
               and not pd.api.types.is_bool_dtype(df[c].dtype)]  # fmt: skip
    categorical = [c for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)]
    levels = [(c, str(lev)) for c in categorical for lev in df[c].cat.categories]
    pd.DataFrame(levels, columns=["column", "level"]).to_csv(d / "levels.csv", index=False)
    (d / "factors.txt").write_text("".join(f"{c}\n" for c in df.columns if c not in numeric))
    out = df.copy()
    for c in categorical:
        out[c] = out[c].astype(str)
    out.to_csv(d / name, index=False)


def _write_counts(counts, d: Path, genes) -> int:
    y = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    y = np.asarray(y, dtype="<f8")
    if y.ndim != 2 or y.shape[1] != len(genes):
        raise ValueError(f"counts: expected a 2-D array with {len(genes)} columns (genes); "
                         f"got shape {y.shape}")  # fmt: skip
    if not np.all(np.isfinite(y)) or (y < 0).any() or (y != np.round(y)).any():
        raise ValueError("counts must be non-negative integers")
    np.ascontiguousarray(y).tofile(d / "counts.bin")
    (d / "meta.txt").write_text(f"{y.shape[0]} {y.shape[1]}\n")
    return y.shape[0]


def _run(script: str, dirs: Sequence[Path], methods, genes_of) -> list:
    """``Rscript <script> DIR ...`` over the job folders ``dirs`` in one R process; per job its
    tables (method → DataFrame) or, where R stopped on that job, a :class:`RuntimeError`."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise RuntimeError("R cannot run: Rscript not found")
    res = run_command([rscript, str(SCRIPTS[script]), *map(str, dirs)],
                      timeout=R_TIMEOUT * max(1, len(dirs)))  # fmt: skip
    if res.returncode == _NO_PACKAGE:
        note = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "a package"
        raise RuntimeError(f"R cannot run {', '.join(methods)}: {note}")
    if res.returncode != 0:
        raise RuntimeError(f"{script}.R failed ({res.returncode}): {res.stderr[-2000:]}")
    out = []
    for d, genes in zip(dirs, genes_of, strict=True):
        if (d / "error.txt").exists():
            out.append(RuntimeError(f"{script}.R failed: {(d / 'error.txt').read_text().strip()}"))
            continue
        seconds = pd.read_csv(d / "seconds.csv").set_index("method")["seconds"]
        tables = {}
        for m in methods:
            tab = pd.read_csv(d / f"{m}.csv", keep_default_na=True)
            tab.index = pd.Index(list(genes), name="gene")
            tab["status"] = tab["status"].astype(str)
            tab.attrs["seconds"] = float(seconds[m])
            tab.attrs["peak_mem_mb"] = float(res.peak_mem_mb)
            tab.attrs["method"] = m
            tables[m] = tab
        out.append(tables)
    return out


def _run_jobs(script: str, jobs: Sequence[dict], methods, write) -> list:
    """Write job i to its own folder with ``write(i, folder)`` and run them all in one R
    process (:func:`_run`)."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for i in range(len(jobs)):
            d = Path(tmp) / f"job{i}"
            d.mkdir()
            write(i, d)
            dirs.append(d)
        return _run(script, dirs, methods, [job["genes"] for job in jobs])


def _first(results: list) -> dict[str, pd.DataFrame]:
    if isinstance(results[0], Exception):
        raise results[0]
    return results[0]


def run_r_pseudobulk(
    counts: np.ndarray,
    samples: pd.DataFrame,
    genes: Sequence[str],
    *,
    design: str,
    coef: str,
    methods: Sequence[str] = PSEUDOBULK_METHODS,
) -> dict[str, pd.DataFrame]:
    """edgeR QL, limma-voom and DESeq2 on pseudobulk counts, in one R process.

    Parameters
    ----------
    counts : ndarray, samples × genes
        Pseudobulk counts (non-negative integers): counts summed per donor within one cell
        type, or per donor × cell type.
    samples : DataFrame, one row per sample (row order of ``counts``)
        The design's variables: e.g. ``sample``, ``group`` (0/1) and covariates
        (``cell_type``, ``donor_id``). Numeric columns stay numeric in R; string, boolean and
        categorical columns are factors, a categorical's first category the reference level
        (else R's sorted order).
    genes : sequence of str
        The gene names (columns of ``counts``), the index of the results.
    design : str
        The R design formula on ``samples``, e.g. ``"~ group"`` or ``"~ cell_type + group"``.
    coef : str
        The tested coefficient, a column name of R's ``model.matrix(design, samples)``:
        ``"group"`` for a numeric 0/1 group, ``"conditiontreated"`` for a factor.
    methods : sequence of {"edger_ql", "limma_voom", "deseq2_r"}
        See the module docstring for the models.

    Returns
    -------
    dict
        method → DataFrame indexed by gene: ``p_value``, ``log_fc`` (log2 fold change for all
        three: edgeR's and DESeq2's of the NB mean, limma's of voom's log2-CPM), ``se`` (NaN
        for edgeR; DESeq2's ``lfcSE``; limma's moderated SE), ``status`` (``ok``,
        ``all_zero``: no fit; ``cooks_outlier``: DESeq2's Cook's cutoff set the p-value to NA;
        ``failed: <R's message>``: the method failed, for every gene), with
        ``.attrs["seconds"]`` (R's elapsed time of the method's pipeline from normalisation
        to test) and ``.attrs["peak_mem_mb"]`` (the whole R process).

    Raises
    ------
    RuntimeError
        R cannot run a requested method (Rscript not found, or R's note naming the package
        that does not load), or the script failed as a whole (e.g. ``coef`` is not a column
        of the design).
    ValueError
        Bad counts, a table of the wrong length or an unknown method.
    """
    job = dict(counts=counts, samples=samples, genes=genes, design=design, coef=coef)
    return _first(run_r_pseudobulk_jobs([job], methods=methods))


def run_r_pseudobulk_jobs(
    jobs: Sequence[dict], *, methods: Sequence[str] = PSEUDOBULK_METHODS
) -> list:
    """:func:`run_r_pseudobulk` on several data sets in one R process (its packages, DESeq2's
    ~7 s above all, loaded once).

    Parameters
    ----------
    jobs : sequence of dict
        Each with the keyword arguments ``counts``, ``samples``, ``genes``, ``design`` and
        ``coef`` of :func:`run_r_pseudobulk`; every job is checked before R starts.
    methods : sequence of {"edger_ql", "limma_voom", "deseq2_r"}
        Run on every job.

    Returns
    -------
    list
        Per job, in order: method → DataFrame as :func:`run_r_pseudobulk` returns, or the
        :class:`RuntimeError` of a job R could not run as a whole (the others still run).

    Raises
    ------
    RuntimeError
        R cannot run a requested method (no Rscript, a package that does not load).
    ValueError
        A bad job (named by its index when there are several) or an unknown method.
    """
    _check_methods(methods, PSEUDOBULK_METHODS)
    for i, job in enumerate(jobs):
        where = f"jobs[{i}]: " if len(jobs) > 1 else ""
        counts, samples = job["counts"], job["samples"]
        if len(samples) != np.shape(counts)[0]:
            raise ValueError(f"{where}samples has {len(samples)} rows; counts has "
                             f"{np.shape(counts)[0]}")  # fmt: skip
        for name in ("design", "coef"):
            val = job[name]
            if not isinstance(val, str) or not val.strip() or "\n" in val:
                raise ValueError(f"{where}{name} must be a one-line string; got {val!r}")

    def write(i, d):
        job = jobs[i]
        _write_counts(job["counts"], d, job["genes"])
        _write_table(job["samples"], d, "samples.csv")
        (d / "spec.txt").write_text(f"{job['design']}\n{job['coef']}\n{','.join(methods)}\n")

    return _run_jobs("pseudobulk_de", jobs, methods, write)


def run_r_cell_models(
    counts,
    obs: pd.DataFrame,
    genes: Sequence[str],
    *,
    fixed: Sequence[str] = (),
    methods: Sequence[str] = CELL_METHODS,
) -> dict[str, pd.DataFrame]:
    """glmmTMB's NB GLMM and lmerTest's LMM per gene on the cells, in one R process.

    For a subset of genes (the caller picks it: one model per gene per method, seconds each).

    Parameters
    ----------
    counts : ndarray or scipy.sparse matrix, cells × genes
        Counts of the subset genes only (non-negative integers; densified for R).
    obs : DataFrame, one row per cell
        Columns ``donor`` (the random intercept's grouping), ``group`` (0/1 or boolean, the
        tested variable), ``libsize`` (the cell's total count, > 0: lmerTest's covariate
        log(libsize)), ``size_factor`` (> 0: glmmTMB's offset log(size_factor)), and the
        ``fixed`` covariates. String, boolean and categorical columns are factors in R.
    genes : sequence of str
        Names of the columns of ``counts``; the index of the results.
    fixed : sequence of str
        Further fixed-effect terms (columns of ``obs`` or R terms), added to both models.
    methods : sequence of {"glmmtmb", "lmertest"}
        ``glmmtmb``: ``count ~ group + fixed + offset(log(size_factor)) + (1|donor)``,
        nbinom2, ML (Laplace), Wald z. ``lmertest``: ``log2(1 + count) ~ log(libsize) + group +
        fixed + (1|donor)``, REML, Satterthwaite t.

    Returns
    -------
    dict
        method → DataFrame indexed by gene: ``p_value``, ``log_fc`` (glmmTMB: log2 fold change
        of the NB mean, its ln-scale estimate / ln 2; lmerTest: the estimate itself, a
        difference of mean log2(1 + count)), ``se`` (same scale), ``df`` (Satterthwaite's;
        inf for glmmTMB's z), ``status`` (``ok``; ``warning: <R's warnings and messages>``
        with the fit's values, e.g. lme4's ``boundary (singular) fit`` or glmmTMB's
        ``non-positive-definite Hessian`` whose p-value is then NA; ``failed: <message>``
        with NA), and ``.attrs["seconds"]`` (R's elapsed time of the whole per-gene loop) and
        ``.attrs["peak_mem_mb"]``.

    Raises
    ------
    RuntimeError
        R cannot run a requested method (Rscript not found, or R's note naming the package
        that does not load), or the script failed as a whole.
    ValueError
        Missing ``obs`` columns, a ``group`` that is not 0/1 with both values, bad counts.
    """
    job = dict(counts=counts, obs=obs, genes=genes, fixed=fixed)
    return _first(run_r_cell_models_jobs([job], methods=methods))


def run_r_cell_models_jobs(jobs: Sequence[dict], *, methods: Sequence[str] = CELL_METHODS) -> list:
    """:func:`run_r_cell_models` on several data sets in one R process (packages loaded once).

    ``jobs``: dicts of the keyword arguments ``counts``, ``obs``, ``genes`` and (optional)
    ``fixed`` of :func:`run_r_cell_models`, each checked before R starts (a ``ValueError``
    names the job's index when there are several). Returns per job the method → DataFrame
    dict, or the :class:`RuntimeError` of a job R could not run as a whole; raises
    ``RuntimeError`` when R cannot run a requested method at all.
    """
    _check_methods(methods, CELL_METHODS)
    tables = [_cell_table(job, f"jobs[{i}]: " if len(jobs) > 1 else "")
              for i, job in enumerate(jobs)]  # fmt: skip

    def write(i, d):
        fixed = jobs[i].get("fixed", ())
        fixed = [fixed] if isinstance(fixed, str) else list(fixed)
        _write_counts(jobs[i]["counts"], d, jobs[i]["genes"])
        _write_table(tables[i], d, "obs.csv")
        (d / "spec.txt").write_text(f"{' + '.join(fixed)}\n{','.join(methods)}\n")

    return _run_jobs("cell_mixed_models", jobs, methods, write)


def _cell_table(job: dict, where: str) -> pd.DataFrame:
    """The checked cell table of ``job`` as R reads it (``where`` prefixes the errors)."""
    counts, obs = job["counts"], job["obs"]
    need = ["donor", "group", "libsize", "size_factor"]
    missing = [c for c in need if c not in obs.columns]
    if missing:
        raise ValueError(f"{where}obs: missing columns {missing} (needs {need} and the "
                         "covariates)")  # fmt: skip
    if len(obs) != np.shape(counts)[0]:
        raise ValueError(f"{where}obs has {len(obs)} rows; counts has {np.shape(counts)[0]}")
    group = np.asarray(obs["group"]).astype(np.float64)
    if set(np.unique(group)) != {0.0, 1.0}:
        raise ValueError(f"{where}obs['group'] must be 0/1 (or boolean) with both values "
                         "present")  # fmt: skip
    for c in ("libsize", "size_factor"):
        v = np.asarray(obs[c], dtype=np.float64)
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{where}obs[{c!r}] must be positive and finite")
    table = obs[need + [c for c in obs.columns if c not in need]].copy()
    table["group"] = group
    table["donor"] = table["donor"].astype(str)
    return table
