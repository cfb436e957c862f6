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
    "scenario_null_type1.csv": ("scenario_null", (
        "scenario", "n_donors", "cells_per_donor", "method", "cell_type", "n_tests", "n_failed",
        "type1_0.05", "lo_0.05", "hi_0.05", "type1_0.01", "lo_0.01", "hi_0.01", "type1_0.001",
        "lo_0.001", "hi_0.001", "tail_0.001", "expected_0.001", "tail_ok_0.001", "tail_0.0001",
        "expected_0.0001", "tail_ok_0.0001", "n_replicates", "rep_lo_0.05", "rep_hi_0.05",
        "rep_lo_0.01", "rep_hi_0.01")),
    "scenario_null_replicates.csv": ("scenario_null", (
        "scenario", "n_donors", "cells_per_donor", "replicate", "method", "cell_type", "n_tests",
        "type1_0.05", "type1_0.01", "type1_0.001")),
    "scenario_null_pvalues.csv.gz": ("scenario_null", (
        "scenario", "n_donors", "cells_per_donor", "replicate", "method", "cell_type", "gene",
        "p_value", "log_fc", "lfc_scale", "status", "seconds")),
    "scenario_null_qq.csv.gz": ("scenario_null", (
        "scenario", "n_donors", "cells_per_donor", "method", "n_tests", "expected", "observed",
        "band_low", "band_high")),
    "scenario_null_notes.csv": ("scenario_null", (
        "scenario", "n_donors", "cells_per_donor", "replicate", "note")),
    "scenario_power_summary.csv": ("scenario_power", (
        "scenario", "n_donors", "cells_per_donor", "question", "method", "cell_type",
        "n_replicates", "lfc_scale", "n_genes_tested", "n_genes_tested_lo", "n_genes_tested_hi",
        "n_de", "n_de_lo", "n_de_hi", "auc", "auc_lo", "auc_hi", "discoveries_0.05",
        "discoveries_0.05_lo", "discoveries_0.05_hi", "tp_0.05", "tp_0.05_lo", "tp_0.05_hi",
        "tpr_0.05", "tpr_0.05_lo", "tpr_0.05_hi", "fdr_0.05", "fdr_0.05_lo", "fdr_0.05_hi",
        "fdr_0.05_n", "tpr_matched_0.05", "tpr_matched_0.05_lo", "tpr_matched_0.05_hi",
        "discoveries_matched_0.05", "discoveries_matched_0.05_lo",
        "discoveries_matched_0.05_hi", "fdr_matched_0.05", "fdr_matched_0.05_lo",
        "fdr_matched_0.05_hi", "fdr_matched_0.05_n", "cutoff_matched_0.05",
        "cutoff_matched_0.05_lo", "cutoff_matched_0.05_hi", "discoveries_0.1",
        "discoveries_0.1_lo", "discoveries_0.1_hi", "tp_0.1", "tp_0.1_lo", "tp_0.1_hi",
        "tpr_0.1", "tpr_0.1_lo", "tpr_0.1_hi", "fdr_0.1", "fdr_0.1_lo", "fdr_0.1_hi",
        "fdr_0.1_n", "tpr_matched_0.1", "tpr_matched_0.1_lo", "tpr_matched_0.1_hi",
        "discoveries_matched_0.1", "discoveries_matched_0.1_lo", "discoveries_matched_0.1_hi",
        "fdr_matched_0.1", "fdr_matched_0.1_lo", "fdr_matched_0.1_hi", "fdr_matched_0.1_n",
        "cutoff_matched_0.1", "cutoff_matched_0.1_lo", "cutoff_matched_0.1_hi", "seconds",
        "seconds_lo", "seconds_hi", "lfc_n", "lfc_n_lo", "lfc_n_hi", "lfc_pearson",
        "lfc_pearson_lo", "lfc_pearson_hi", "lfc_slope", "lfc_slope_lo", "lfc_slope_hi",
        "lfc_sign_agreement", "lfc_sign_agreement_lo", "lfc_sign_agreement_hi", "lfc_bias",
        "lfc_bias_lo", "lfc_bias_hi", "lfc_rmse", "lfc_rmse_lo", "lfc_rmse_hi",
        "lfc_magnitude_error", "lfc_magnitude_error_lo", "lfc_magnitude_error_hi")),
    "scenario_power_replicates.csv": ("scenario_power", (
        "scenario", "n_donors", "cells_per_donor", "replicate", "question", "method",
        "cell_type", "n_genes_tested", "n_de", "n_no_p", "n_failed", "failure", "seconds",
        "discoveries_0.05", "tp_0.05", "tpr_0.05", "fdr_0.05", "discoveries_0.1", "tp_0.1",
        "tpr_0.1", "fdr_0.1", "tpr_matched_0.05", "discoveries_matched_0.05",
        "fdr_matched_0.05", "cutoff_matched_0.05", "tpr_matched_0.1", "discoveries_matched_0.1",
        "fdr_matched_0.1", "cutoff_matched_0.1", "auc", "lfc_scale", "notes", "lfc_n",
        "lfc_pearson", "lfc_slope", "lfc_intercept", "lfc_sign_agreement", "lfc_bias",
        "lfc_rmse", "lfc_magnitude_error", "lfc_bias_sign")),
    "scenario_power_curves.csv.gz": ("scenario_power", (
        "scenario", "n_donors", "cells_per_donor", "method", "cell_type", "n_replicates",
        "n_de", "point", "nominal", "k", "discoveries_per_replicate", "tp", "fp", "fdr", "tpr",
        "cutoff", "controlled")),
    "scenario_lfc.csv": ("scenario_power", (
        "scenario", "n_donors", "cells_per_donor", "method", "cell_type", "lfc_scale",
        "n_replicates", "comparable", "n", "pearson", "slope", "intercept", "sign_agreement",
        "bias", "rmse", "magnitude_error", "bias_sign")),
    "scenario_lfc_genes.csv.gz": ("scenario_power", (
        "scenario", "n_donors", "cells_per_donor", "replicate", "method", "cell_type", "gene",
        "true_lfc", "log_fc", "lfc_scale")),
}  # fmt: skip
