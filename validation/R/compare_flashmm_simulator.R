# Side-by-side comparison of FLASHMM's simuRNAseq (R) and pyflashmm.simulate_rnaseq (Python).
#
# Optional: runs only where R has FLASHMM installed (this script never installs it) and
# `python` can import pyflashmm. Both simulators start from the same reference (FLASHMM's
# synthetic reference, 1000 genes x 10000 cells, with its metadata) and simulate
# 100 genes x 100,000 cells; the script prints quantiles of the per-gene means, MME
# dispersions (size) and zero fractions of both outputs, and writes them to
# validation/results/compare_flashmm_simulator.csv.
#
# Usage: Rscript validation/R/compare_flashmm_simulator.R [python executable]
# (from the repository root: the output path above is relative to it)

args <- commandArgs(trailingOnly = TRUE)
python <- if (length(args) >= 1) args[1] else "python"
if (!requireNamespace("FLASHMM", quietly = TRUE)) {
  message("FLASHMM is not installed in R: nothing to compare.")
  quit(status = 0)
}
suppressMessages(library(FLASHMM))

gene_stats <- function(counts) { # counts: genes x cells
  mu <- rowMeans(counts)
  n <- ncol(counts)
  v <- rowSums(counts^2) / (n - 1) - n * mu^2 / (n - 1)
  data.frame(mean = mu, size = ifelse(v > mu, mu^2 / (v - mu), NA), zero = rowMeans(counts == 0))
}

set.seed(2502)
ref <- simuRNAseq(nGenes = 1000, nCells = 10000)
set.seed(2503)
dat <- suppressMessages(simuRNAseq(ref$counts, metadata = ref$metadata, nGenes = 100,
  nCells = 100000, nDEgenes = 10, minbeta = 0.5, maxbeta = 1, var.randomeffects = 0.1))
r_stats <- gene_stats(dat$counts)

tmp <- tempfile()
dir.create(tmp)
Matrix::writeMM(Matrix::Matrix(t(ref$counts), sparse = TRUE), file.path(tmp, "ref.mtx"))
write.csv(ref$metadata[, c("sam", "cls", "trt")], file.path(tmp, "meta.csv"))
py <- sprintf('
import numpy as np, pandas as pd, scipy.io
import pyflashmm as fm
R = scipy.io.mmread("%1$s/ref.mtx").tocsr().astype(np.int64)
meta = pd.read_csv("%1$s/meta.csv", index_col=0).astype(str)
sim = fm.simulate_rnaseq(R, metadata=meta.reset_index(drop=True), n_genes=100,
    n_cells=100000, n_de_genes=10, min_beta=0.5, max_beta=1.0, var_random_effects=0.1, rng=2503)
Y = sim.counts
n = Y.shape[0]
mu = np.asarray(Y.mean(axis=0)).ravel()
v = (np.asarray(Y.multiply(Y).sum(axis=0)).ravel() - n * mu**2) / (n - 1)
size = np.where(v > mu, mu**2 / np.where(v > mu, v - mu, 1), np.nan)
zero = 1 - np.diff(Y.tocsc().indptr) / n
pd.DataFrame({"mean": mu, "size": size, "zero": zero}).to_csv("%1$s/py.csv", index=False)
', tmp)
status <- system2(python, c("-c", shQuote(py)))
if (status != 0) stop("python side failed")
py_stats <- read.csv(file.path(tmp, "py.csv"))

probs <- c(0.05, 0.25, 0.5, 0.75, 0.95)
rows <- list()
for (v in c("mean", "size", "zero")) {
  rows[[v]] <- data.frame(statistic = v, quantile = probs,
    flashmm_R = quantile(r_stats[[v]], probs, na.rm = TRUE),
    pyflashmm = quantile(py_stats[[v]], probs, na.rm = TRUE))
}
out <- do.call(rbind, rows)
rownames(out) <- NULL
print(out, digits = 4)
for (v in c("mean", "size", "zero")) {
  ks <- suppressWarnings(ks.test(r_stats[[v]], py_stats[[v]]))
  cat(sprintf("%s: two-sample KS D = %.3f, p = %.3g\n", v, ks$statistic, ks$p.value))
}
dir.create("validation/results", showWarnings = FALSE, recursive = TRUE)
write.csv(out, "validation/results/compare_flashmm_simulator.csv", row.names = FALSE)
