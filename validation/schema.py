"""The columns of every results table (the contract of ``validation/README.md``).

Every table also ends with the provenance columns ``seed``, ``version``, ``git_rev``.
"""

from __future__ import annotations

PROVENANCE = ("seed", "version", "git_rev")

#: table file name → (experiment, its own columns in order)
TABLES = {
    "agreement_summary.csv": ("agreement", (
        "comparison", "scenario", "K", "fit_method", "n_subjects", "n_cells", "balanced",
        "quantity", "n_values", "max_rel_diff", "median_rel_diff", "max_abs_diff")),
    "agreement_values.csv.gz": ("agreement", (
        "comparison", "scenario", "quantity", "ours", "reference")),
    "calibration_type1.csv": ("calibration", (
        "var_random_effects", "n_subjects", "cells_per_subject", "method", "alpha", "n_tests",
        "n_failed", "n_rejected", "type1_error", "ci_low", "ci_high")),
    "calibration_pvalues.csv.gz": ("calibration", (
        "var_random_effects", "n_subjects", "cells_per_subject", "replicate", "method", "gene",
        "p_value", "status")),
    "power_summary.csv": ("power", (
        "scope", "abs_beta", "n_subjects", "cells_per_subject", "method", "threshold", "n_de",
        "tp", "fp", "tpr", "observed_fdr", "auc")),
    "power_curves.csv.gz": ("power", (
        "scope", "abs_beta", "n_subjects", "cells_per_subject", "method", "fdr", "tpr")),
    "runtime.csv": ("runtime", (
        "tool", "axis", "n_cells", "n_genes", "n_subjects", "seconds", "peak_mem_mb", "repeats",
        "status", "note")),
}  # fmt: skip
