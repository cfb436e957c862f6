r"""Which LMM inference should be the default? Calibration and power of the variants.

``python -m validation.lmm_inference [--workers N] [--methods m1,m2]`` runs, for the LMM
variants of :data:`validation.methods.LMM_VARIANTS` named in
``configs/lmm_inference.toml`` (and the pseudobulk NB GLM as the reference of power):

* the calibration experiment's quick grid (σ_b² × S × m, 2 replicates of 300 null genes), a
  6-subject grid with 4 replicates, and a confirmation grid on fresh seeds with 8 replicates
  over the settings where a Wilson interval lay above α in the first two
  (:mod:`validation.calibration`); the summary has a row per (method, grid);
* the power experiment, DE within one cell type, 6 and 10 subjects (:mod:`validation.power`);

and writes to ``validation/results/lmm_inference/`` the experiments' tables (not the per-gene
p-values, which are only summarised) and
``lmm_inference_summary.csv``: per method, the share of non-degenerate null genes without a
p-value, the number of settings whose Wilson 95% interval of the type-I error lies entirely
above α (0.05, 0.01), the largest type-I error and its setting, and TPR at observed FDR ≤ 5%
(the best TPR on the replicate-pooled FDR–TPR curve whose observed FDR is ≤ 0.05) for 6 and
10 subjects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from validation import calibration, power
from validation.config import tomllib
from validation.provenance import write_table

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "configs" / "lmm_inference.toml"
RESULTS = ROOT / "results" / "lmm_inference"
#: the calibration grids of the config
PARTS = ("calibration", "calibration_6_subjects", "calibration_confirm")
#: statuses of genes that no method can test (every value the same)
DEGENERATE = ("zero_variance", "all_zero")


def _calibration_summary(pvals: pd.DataFrame, type1: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (part, method), grp in type1.groupby(["part", "method"], sort=False):
        row = {"grid": part, "method": method}
        for a in (0.05, 0.01):
            t = grp[np.isclose(grp["alpha"], a)]
            worst = t.loc[t["type1_error"].idxmax()]
            tag = f"{a:g}"
            row[f"settings_above_{tag}"] = int((t["ci_low"] > a).sum())
            row[f"n_settings_{tag}"] = len(t)
            row[f"max_type1_{tag}"] = float(worst["type1_error"])
            row[f"max_type1_{tag}_ci"] = f"[{worst['ci_low']:.3f}, {worst['ci_high']:.3f}]"
            row[f"max_type1_{tag}_setting"] = (
                f"σ²={worst['var_random_effects']:g} S={worst['n_subjects']} "
                f"m={worst['cells_per_subject']}"
            )
            pooled = t["n_rejected"].sum() / t["n_tests"].sum()
            row[f"pooled_type1_{tag}"] = float(pooled)
        rows.append(row)
    out = pd.DataFrame(rows)
    testable = pvals[~pvals["status"].isin(DEGENERATE)]
    share = testable.groupby(["part", "method"], sort=False)["p_value"].apply(
        lambda v: v.isna().mean()
    )
    out["share_without_p"] = [
        share.get((g, m), np.nan) for g, m in zip(out["grid"], out["method"], strict=True)
    ]
    return out


def _tpr_at_fdr(curves: pd.DataFrame, level: float = 0.05) -> pd.DataFrame:
    rows = []
    for (method, S, beta), grp in curves.groupby(["method", "n_subjects", "abs_beta"], sort=False):
        ok = grp["fdr"] <= level
        rows.append(
            (method, int(S), float(beta), float(grp.loc[ok, "tpr"].max()) if ok.any() else 0.0)
        )
    return pd.DataFrame(rows, columns=["method", "n_subjects", "abs_beta", "tpr_at_fdr_0.05"])


def _pvalues_with_status(
    config: dict, workers: int, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the calibration grids; their per-gene p-values (with each gene's status) and
    type-I tables, the p-value files summarised here and then removed."""
    frames_p, frames_t = [], []
    for part in PARTS:
        cfg = {
            "seed": config["seed"],
            **config["quick"][part],
            "methods": config["quick"]["methods"],
        }
        cfg["methods"] = [m for m in cfg["methods"] if m != "nbglm_pseudobulk"]
        out = RESULTS / part
        calibration.run(cfg, results_dir=out, workers=workers, progress=progress)
        pfile = out / "calibration_pvalues.csv.gz"
        frames_p.append(pd.read_csv(pfile, comment="#").assign(part=part))
        pfile.unlink()  # 1–2 MB per part, summarised below; rerun the script to regenerate
        frames_t.append(pd.read_csv(out / "calibration_type1.csv", comment="#").assign(part=part))
    return pd.concat(frames_p, ignore_index=True), pd.concat(frames_t, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m validation.lmm_inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", help="comma-separated subset of the config's methods")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    config = tomllib.loads(CONFIG.read_text())
    if args.methods:
        config["quick"]["methods"] = args.methods.split(",")
    RESULTS.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    pvals, type1 = _pvalues_with_status(config, args.workers, progress)
    summary = _calibration_summary(pvals, type1)
    pw = {"seed": config["seed"], **config["quick"]["power"], "methods": config["quick"]["methods"]}
    power.run(pw, results_dir=RESULTS / "power", workers=args.workers, progress=progress)
    curves = pd.read_csv(RESULTS / "power" / "power_curves.csv.gz", comment="#")
    tpr = _tpr_at_fdr(curves)
    wide = tpr.pivot_table(
        index="method", columns=["n_subjects", "abs_beta"], values="tpr_at_fdr_0.05"
    )
    wide.columns = [f"tpr_S{s}_beta{b:g}" for s, b in wide.columns]
    summary = summary.merge(wide, left_on="method", right_index=True, how="outer")
    write_table(summary, RESULTS / "lmm_inference_summary.csv", seed=int(config["seed"]))
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
