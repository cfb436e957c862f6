# Time FLASHMM's simuRNAseq at the size of its vignette, for benchmarks/bench_simulate.py:
# a synthetic reference of 1000 genes x 10000 cells, then 100 genes x 100,000 cells (10 DE
# genes), three times. FLASHMM must be installed (R_LIBS may point to it).
# Usage: Rscript flashmm_simulate_time.R
# Prints the median elapsed seconds of the three simulations.
suppressMessages(library(FLASHMM))
set.seed(2502)
ref <- simuRNAseq(nGenes = 1000, nCells = 10000)
t <- c()
for (i in 1:3) {
  t0 <- proc.time()[["elapsed"]]
  dat <- suppressMessages(simuRNAseq(ref$counts, metadata = ref$metadata, nGenes = 100,
    nCells = 100000, nDEgenes = 10, minbeta = 0.5, maxbeta = 1, var.randomeffects = 0.1))
  t <- c(t, proc.time()[["elapsed"]] - t0)
}
cat(median(t), "\n")
