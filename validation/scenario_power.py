r"""Power on the realistic scenarios: TPR at matched observed FDR, with the discoveries it rests on.

For every scenario of ``scenarios`` (:data:`validation.scenarios.SCENARIOS`), number of donors
S ∈ ``n_donors``, mean cells per donor m ∈ ``cells_per_donor`` and replicate r, DE data
(``simulate_scenario(..., null=False)``: a fraction of the genes DE with a known natural-log
fold change θ_g, the arms fixed and recorded) are drawn from their own child of
``SeedSequence(seed)`` (task order: scenarios, donors, cells, replicates innermost), and every
method of :mod:`validation.scenario_methods` tests the scenario's question:

``within`` (``contrast="within"``)
    the condition within ``de_cell_type``, the one cell type where the truth is (the
    ``cell_type:condition`` contrast); a gene is DE when it is DE in that cell type, θ_g its
    fold change there.
``average`` (``contrast="average"``)
    the condition effect averaged over the cell types (``cell_type == "all"`` in the results).
    A gene DE in every cell type has θ_g; on FLASHMM's model (``flashmm_reference``) each DE
    gene is DE in one cell type t, and its true averaged effect is π_t·θ_g (π_t the cell-type
    proportion): the cell-weighted mean of the per-cell-type effects, which the engine's
    main-effect models (``~ cell_type + condition``; arms balanced within every type in
    expectation) estimate, approximately (the NB models weight by expression too).

Metrics per replicate and method (:mod:`validation.metrics`), on the genes the method tested
(``n_genes_tested``: glmmTMB and lmerTest run on a gene subset, so theirs are subset metrics;
``method_limits`` bounds costly methods as in :mod:`validation.scenario_null`):
discoveries, TP, TPR and observed FDR of BH at each level of ``fdr_levels`` (BH over the
method's finite p-values); TPR at matched observed FDR (the largest p-value cutoff whose
observed FDR FP/(FP + TP) is at most the target) with its discoveries and cutoff; ROC AUC;
log-fold-change accuracy on the DE genes against θ on the scale the method claims (``log2``:
θ̂ = log_fc·ln 2; ``log2_1p``: a difference of mean log2(1 + count), the LMM's and lmerTest's,
not a fold change — only its correlation, slope and the sign of its magnitude error against
the log2 fold change are reported); and the method's seconds.

Outputs (``results_dir``):

``scenario_power_replicates.csv``
    one row per scenario, setting, replicate and method (columns: validation/README.md).
``scenario_power_summary.csv``
    per scenario, S, m and method: the replicate mean of every metric with its 95% t interval
    (``<metric>_lo``, ``<metric>_hi``; :func:`validation.metrics.replicate_interval`) and
    ``n_replicates``. Observed FDRs are averaged over the replicates with at least one
    discovery (their count: ``<metric>_n``).
``scenario_power_curves.csv.gz``
    per scenario, setting and method, the discovery curve of the genes of all replicates ranked
    together (k, TP, FP, observed FDR, TPR; thinned to ``curve_points``) and the BH points at
    ``bh_levels`` (per-replicate BH calls summed over replicates; ``point == "bh"``).
``scenario_lfc.csv``
    per scenario, setting and method, LFC accuracy over the DE genes of all replicates.
``scenario_lfc_genes.csv.gz``
    the DE genes' true θ and estimates (every replicate), for the figure.

A stage of ``python -m validation``; alone: ``python -m validation.scenario_power --variant quick
--out validation/results [--workers 2]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from validation.config import check_config
from validation.metrics import (
    LFC_SCALES,
    bh_points,
    discovery_curve,
    lfc_accuracy,
    replicate_interval,
    roc_auc,
    tpr_at_matched_fdr,
)
from validation.mock_null import cells_with_counts
from validation.parallel import map_replicates, replicate_seeds
from validation.provenance import write_table
from validation.scenario_null import check_limits, command_line, limited_methods, settings
from validation.scenarios import (
    CELL_TYPE,
    CELLS_RANGE,
    CONDITION,
    CONTROL,
    DONOR,
    DONOR_RANGE,
    SCENARIOS,
    TREATED,
    simulate_scenario,
)

NAME = "scenario_power"
SOURCES = ("scenario_null", "scenario_methods", "methods", "r_de", "r_tools", "measure",
           "scenarios", "metrics", "mock_null", "parallel", "provenance")  # fmt: skip
KEYS = ["scenario", "n_donors", "cells_per_donor"]
FDR_LEVELS = (0.05, 0.1)
BH_LEVELS = (0.01, 0.05, 0.1)
#: the per-replicate metrics summarised with intervals (besides the per-level ones)
_BASE_METRICS = ("n_genes_tested", "n_de", "auc", "seconds", "lfc_n", "lfc_pearson",
                 "lfc_slope", "lfc_sign_agreement", "lfc_bias", "lfc_rmse",
                 "lfc_magnitude_error")  # fmt: skip
_LFC_STATS = ("n", "pearson", "slope", "intercept", "sign_agreement", "bias", "rmse",
              "magnitude_error", "bias_sign")  # fmt: skip


def _methods():
    from validation.scenario_methods import METHODS

    return METHODS


def environment(config: dict) -> dict:
    """Which of the configured R methods cannot run here, and why (part of the pipeline's
    stamp: installing R reruns the experiment)."""
    from validation.scenario_methods import r_unavailable

    return r_unavailable(list(config.get("methods", _methods())))


def lfc_scale(scale: str) -> str | None:
    """The key of :data:`validation.metrics.LFC_SCALES` for the ``lfc_scale`` text of
    :func:`validation.scenario_methods.test_data`; None when it names no log scale.

    A difference of mean log2(1 + count) (the LMMs, ``lm``, lmerTest) is ``log2_1p``; any other
    log2 quantity is ``log2``: the NB GLM/GLMM and edgeR/DESeq2 log2 fold changes of the mean,
    and the log2-CPM differences of voom and dream (a log2 fold change of normalised
    expression). scanpy's ``logfoldchanges`` of the Wilcoxon recipe (a log2 ratio of
    back-transformed mean log1p values, shrunk towards 0 for sparse genes) is ``log2_expm1``,
    reported like ``log2_1p`` (correlation and slope, no bias or RMSE against θ).
    """
    s = str(scale).strip().lower().replace(" ", "")
    if s in LFC_SCALES:
        return s
    if "log2(1+" in s:
        return "log2_1p"
    if "expm1" in s:
        return "log2_expm1"
    if "log2" in s:
        return "log2"
    if s in ("ln", "natural", "naturallog") or "natural-log" in s or "naturallog" in s:
        return "ln"
    return None


def truth_for(var: pd.DataFrame, question: str, tested: str, weights: dict) -> pd.Series:
    """The true natural-log effect of the tested contrast per gene (0: not DE).

    ``within``: θ_g where the gene is DE in the tested cell type ``tested``. ``average``: θ_g
    where it is DE in every cell type (``de_cell_type == "all"``) and π_t·θ_g where it is DE in
    cell type t only (``weights``: {t: π_t}, the cell-type proportions): the average of the
    per-cell-type effects weighted by the cells, which the engine's main-effect models
    (``~ cell_type + condition``, arms balanced within every type) estimate approximately.
    """
    where = var["de_cell_type"].astype(str)
    lfc = var["lfc"].astype(float)
    if question == "within":
        return lfc.where(where == tested, 0.0)
    w = where.map(lambda t: 1.0 if t == "all" else weights.get(t, 0.0)).astype(float)
    return lfc * w


def exact_truth(var: pd.DataFrame, question: str) -> pd.Series:
    """Genes whose :func:`truth_for` is what every method estimates, the genes of the LFC
    comparison: all genes for ``within``; for ``average`` the genes DE in every cell type (θ)
    and the null ones. A gene DE in one cell type only has no single averaged effect: a
    pseudobulk or NB model of the averaged question estimates ln Σ_t w_t e^{θ·1[t]} (w_t the
    type's share of the gene's expected counts), the cell-level LMM about π_t·θ on its own
    scale; those genes count for power but not for LFC accuracy."""
    where = var["de_cell_type"].astype(str)
    if question == "within":
        return pd.Series(True, index=var.index)
    return (where == "all") | ~var["de"].astype(bool)


def _method_rows(res: pd.DataFrame, truth: pd.Series, levels, exact=None) -> tuple:
    """Per-replicate metrics of each method, its per-gene (p, DE) and the LFCs of its DE genes
    whose truth is ``exact`` (all when None)."""
    rows, genes, lfc_points = [], [], []
    for (method, ct), g in res.groupby(["method", "cell_type"], sort=False):
        g = g.drop_duplicates("gene").set_index("gene")
        theta = truth.reindex(g.index.astype(str)).fillna(0.0).to_numpy()
        is_de = theta != 0
        comparable_de = is_de & (
            True if exact is None else exact.reindex(g.index.astype(str)).fillna(False).to_numpy()
        )
        p = g["p_value"].to_numpy(dtype=np.float64)
        status = g["status"].astype(str) if "status" in g.columns else pd.Series("ok", g.index)
        secs = pd.to_numeric(g.get("seconds", pd.Series(np.nan, g.index)), errors="coerce")
        row = {"method": method, "cell_type": ct, "n_genes_tested": int(len(g)),
               "n_de": int(is_de.sum()), "n_no_p": int((~np.isfinite(p)).sum()),
               "n_failed": int(status.str.startswith("failed").sum()),
               "failure": next((x[:200] for x in status if x.startswith("failed")), ""),
               "seconds": float(secs.max()) if secs.notna().any() else np.nan}  # fmt: skip
        if is_de.any() and np.isfinite(p).any():
            for pt in bh_points(p, is_de, levels):
                a = f"{pt['level']:g}"
                row.update({f"discoveries_{a}": pt["n_discoveries"], f"tp_{a}": pt["tp"],
                            f"tpr_{a}": pt["tpr"], f"fdr_{a}": pt["observed_fdr"]})  # fmt: skip
            for a in levels:
                m = tpr_at_matched_fdr(p, is_de, a)
                row.update({f"tpr_matched_{a:g}": m["tpr"],
                            f"discoveries_matched_{a:g}": m["n_discoveries"],
                            f"fdr_matched_{a:g}": m["observed_fdr"],
                            f"cutoff_matched_{a:g}": m["cutoff"]})  # fmt: skip
            row["auc"] = roc_auc(p, is_de)
            genes.append(pd.DataFrame({"method": method, "cell_type": ct, "p_value": p,
                                       "is_de": is_de}))  # fmt: skip
        scale_raw = g["lfc_scale"].dropna().astype(str) if "lfc_scale" in g.columns else []
        scale_raw = scale_raw.iloc[0] if len(scale_raw) else ""
        scale = lfc_scale(scale_raw)
        row["lfc_scale"] = scale if scale is not None else scale_raw
        if scale is not None and comparable_de.any():
            est = g["log_fc"].to_numpy(dtype=np.float64)
            de = comparable_de
            acc = lfc_accuracy(est[de], theta[de], scale)
            row.update({f"lfc_{k}": acc[k] for k in _LFC_STATS})
            lfc_points.append(pd.DataFrame({"method": method, "cell_type": ct,
                                            "gene": g.index[de].astype(str),
                                            "true_lfc": theta[de], "log_fc": est[de],
                                            "lfc_scale": scale}))  # fmt: skip
        rows.append(row)
    return rows, genes, lfc_points


def _task(task: dict) -> dict:
    from validation.scenario_methods import default_methods, test_data

    methods, skipped = limited_methods(task["methods"] or default_methods(),
                                       task["method_limits"], scenario=task["scenario"],
                                       cells_per_donor=task["cells_per_donor"],
                                       replicate=task["replicate"])  # fmt: skip
    if not methods:  # every method limited out of this task
        return {"replicates": pd.DataFrame(), "genes": [], "lfc": []}
    sc = SCENARIOS[task["scenario"]]
    data = simulate_scenario(task["scenario"], n_donors=task["n_donors"],
                             cells_per_donor=task["cells_per_donor"], n_genes=task["n_genes"],
                             seed=task["seed"], null=False)  # fmt: skip
    adata = cells_with_counts(data.to_anndata(), "counts")
    question = sc.contrast
    tested = sc.de_cell_type if question == "within" else "all"
    res, notes = test_data(adata, donor=DONOR, cell_type=CELL_TYPE, condition=CONDITION,
                           levels=(CONTROL, TREATED), layer="counts", question=question,
                           cell_types=[sc.de_cell_type] if question == "within" else None,
                           methods=methods, min_cells=task["min_cells"],
                           r_gene_subset=task["r_gene_subset"], seed=task["seed"])  # fmt: skip
    weights = dict(zip(sc.cell_types, sc.type_proportions, strict=True))
    truth = truth_for(data.var, question, tested, weights)
    truth.index = truth.index.astype(str)
    exact = exact_truth(data.var, question)
    exact.index = exact.index.astype(str)
    rows, genes, lfc = _method_rows(res, truth, task["fdr_levels"], exact)
    label = {k: task[k] for k in (*KEYS, "replicate")}
    reps = pd.DataFrame(rows)
    reps.insert(0, "question", question)
    note = "; ".join(str(n) for n in [*skipped, *(notes or [])])
    reps = reps.assign(**label, notes=note)
    return {
        "replicates": reps,
        "genes": [g.assign(**label) for g in genes],
        "lfc": [f.assign(**label) for f in lfc],
    }


def _interval_columns(rows: pd.DataFrame, metrics) -> dict:
    out = {}
    for m in metrics:
        if m not in rows.columns:
            continue
        ci = replicate_interval(pd.to_numeric(rows[m], errors="coerce").to_numpy())
        out.update({m: ci["mean"], f"{m}_lo": ci["lo"], f"{m}_hi": ci["hi"]})
        if m.startswith("fdr_"):
            out[f"{m}_n"] = ci["n"]  # replicates with a discovery: the FDR's denominator
    return out


def summarise(replicates: pd.DataFrame, levels=FDR_LEVELS) -> pd.DataFrame:
    """Replicate means and 95% t intervals of every metric per scenario, setting and method."""
    per_level = []
    for a in levels:
        a = f"{a:g}"
        per_level += [f"discoveries_{a}", f"tp_{a}", f"tpr_{a}", f"fdr_{a}",
                      f"tpr_matched_{a}", f"discoveries_matched_{a}", f"fdr_matched_{a}",
                      f"cutoff_matched_{a}"]  # fmt: skip
    metrics = (*_BASE_METRICS[:3], *per_level, *_BASE_METRICS[3:])
    out = []
    by = [*KEYS, "question", "method", "cell_type"]
    for key, g in replicates.groupby(by, sort=False):
        row = dict(zip(by, key, strict=True))
        row["n_replicates"] = int(g["replicate"].nunique())
        row["lfc_scale"] = g["lfc_scale"].iloc[0] if "lfc_scale" in g.columns else ""
        row.update(_interval_columns(g, metrics))
        out.append(row)
    return pd.DataFrame(out)


def pooled_curves(genes: pd.DataFrame, bh_levels=BH_LEVELS, *,
                  curve_points: int = 200) -> pd.DataFrame:  # fmt: skip
    """Discovery curves of the genes of all replicates ranked together, and the BH points
    (per-replicate BH calls summed over the replicates), per scenario, setting and method."""
    parts = []
    by = [*KEYS, "method", "cell_type"]
    for key, g in genes.groupby(by, sort=False):
        label = dict(zip(by, key, strict=True))
        n_rep = int(g["replicate"].nunique())
        c = discovery_curve(g["p_value"].to_numpy(), g["is_de"].to_numpy(bool),
                            max_points=curve_points)  # fmt: skip
        parts.append(pd.DataFrame({**label, "n_replicates": n_rep, "n_de": c["n_de"],
                                   "point": "curve", "nominal": np.nan, "k": c["k"],
                                   "discoveries_per_replicate": c["k"] / n_rep, "tp": c["tp"],
                                   "fp": c["fp"], "fdr": c["fdr"], "tpr": c["tpr"],
                                   "cutoff": c["cutoff"], "controlled": np.nan}))  # fmt: skip
        bh = [pt | {"replicate": r} for r, gr in g.groupby("replicate", sort=True)
              for pt in bh_points(gr["p_value"].to_numpy(), gr["is_de"].to_numpy(bool),
                                  bh_levels)]  # fmt: skip
        bh = pd.DataFrame(bh).groupby("level", sort=True)[["n_discoveries", "tp", "fp"]].sum()
        for a, r in bh.iterrows():
            k = int(r["n_discoveries"])
            fdr = r["fp"] / k if k else np.nan
            parts.append(pd.DataFrame([{**label, "n_replicates": n_rep, "n_de": c["n_de"],
                                        "point": "bh", "nominal": float(a), "k": k,
                                        "discoveries_per_replicate": k / n_rep,
                                        "tp": int(r["tp"]), "fp": int(r["fp"]), "fdr": fdr,
                                        "tpr": r["tp"] / c["n_de"], "cutoff": np.nan,
                                        "controlled": bool(k and fdr <= a)}]))  # fmt: skip
    if not parts:
        return pd.DataFrame(columns=[*by, "n_replicates", "n_de", "point", "nominal", "k",
                                     "discoveries_per_replicate", "tp", "fp", "fdr", "tpr",
                                     "cutoff", "controlled"])  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def lfc_table(points: pd.DataFrame) -> pd.DataFrame:
    """LFC accuracy per scenario, setting and method over the DE genes of all replicates."""
    out = []
    by = [*KEYS, "method", "cell_type", "lfc_scale"]
    for key, g in points.groupby(by, sort=False):
        acc = lfc_accuracy(g["log_fc"].to_numpy(), g["true_lfc"].to_numpy(), key[-1])
        out.append({**dict(zip(by, key, strict=True)),
                    "n_replicates": int(g["replicate"].nunique()),
                    **{k: acc[k] for k in ("comparable", *_LFC_STATS)}})  # fmt: skip
    return pd.DataFrame(out)


def check(config: dict) -> None:
    """Raise ``ValueError`` naming the key when ``config`` is not a valid scenario_power
    config."""
    methods = _methods()
    check_config(config, NAME, ("scenarios", "n_donors", "cells_per_donor", "n_genes",
                                "replicates"), {
        "scenarios": (lambda v: v in SCENARIOS, f"names in {sorted(SCENARIOS)}"),
        "n_donors": (lambda v: isinstance(v, int) and DONOR_RANGE[0] <= v <= DONOR_RANGE[1],
                     "integers in 4–40"),
        "cells_per_donor": (lambda v: isinstance(v, int)
                            and CELLS_RANGE[0] <= v <= CELLS_RANGE[1], "integers in 20–2,000"),
        "n_genes": (lambda v: isinstance(v, int) and v >= 10, "an integer >= 10"),
        "replicates": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "methods": (lambda v: v in methods, f"names in {list(methods)}"),
        "min_cells": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "r_gene_subset": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "fdr_levels": (lambda v: isinstance(v, float) and 0 < v < 1, "levels in (0, 1)"),
        "bh_levels": (lambda v: isinstance(v, float) and 0 < v < 1, "levels in (0, 1)"),
        "curve_points": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    })  # fmt: skip
    check_limits(config.get("method_limits", {}), methods,
                 f"configs/{NAME}.toml [{config.get('variant', '?')}]")  # fmt: skip


def run(config: dict, *, results_dir: Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """Run the experiment of ``config`` (checked first); write the five tables to
    ``results_dir`` and return their paths."""
    check(config)
    grid = settings(config)
    reps = int(config["replicates"])
    seeds = replicate_seeds(int(config["seed"]), len(grid) * reps)
    levels = tuple(float(a) for a in config.get("fdr_levels", FDR_LEVELS))
    bh_levels = tuple(float(a) for a in config.get("bh_levels", BH_LEVELS))
    tasks = [
        {"scenario": sc, "n_donors": s, "cells_per_donor": m, "replicate": r,
         "n_genes": int(config["n_genes"]),
         "methods": tuple(config["methods"]) if "methods" in config else None,
         "min_cells": int(config.get("min_cells", 10)),
         "r_gene_subset": int(config.get("r_gene_subset", 100)),
         "method_limits": dict(config.get("method_limits", {})),
         "fdr_levels": levels, "bh_levels": bh_levels,
         "seed": int(seeds[i * reps + r].generate_state(1)[0])}
        for i, (sc, s, m) in enumerate(grid)
        for r in range(reps)
    ]  # fmt: skip
    out = map_replicates(_task, tasks, workers=workers, progress=progress, desc=NAME)
    replicates = pd.concat([o["replicates"] for o in out], ignore_index=True)
    first = [*KEYS, "replicate", "question", "method", "cell_type"]
    replicates = replicates[first + [c for c in replicates.columns if c not in first]]
    summary = summarise(replicates, levels)
    genes = pd.concat([g for o in out for g in o["genes"]], ignore_index=True)
    curves = pooled_curves(genes, bh_levels,
                           curve_points=int(config.get("curve_points", 200)))  # fmt: skip
    lfc_frames = [f for o in out for f in o["lfc"]]
    points = (pd.concat(lfc_frames, ignore_index=True) if lfc_frames else
              pd.DataFrame(columns=[*KEYS, "replicate", "method", "cell_type", "gene",
                                    "true_lfc", "log_fc", "lfc_scale"]))  # fmt: skip
    points = points[[*KEYS, "replicate", "method", "cell_type", "gene", "true_lfc", "log_fc",
                     "lfc_scale"]]  # fmt: skip
    results_dir = Path(results_dir)
    seed = int(config["seed"])
    return [
        write_table(summary, results_dir / f"{NAME}_summary.csv", seed=seed),
        write_table(replicates, results_dir / f"{NAME}_replicates.csv", seed=seed),
        write_table(curves, results_dir / f"{NAME}_curves.csv.gz", seed=seed),
        write_table(lfc_table(points), results_dir / "scenario_lfc.csv", seed=seed),
        write_table(points, results_dir / "scenario_lfc_genes.csv.gz", seed=seed),
    ]


def main(argv=None) -> int:
    return command_line(NAME, __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
