# Time FLASHMM::lmm on summary statistics written by validation/r_tools.py
# (write_flashmm_inputs: float64 little-endian files), for benchmarks/bench_lmm.py and
# validation/runtime.py.
# Usage: Rscript flashmm_lmm.R DIR   (FLASHMM must be installed; R_LIBS may point to it)
# Writes DIR/flashmm_time.txt (elapsed seconds), DIR/flashmm_theta.bin, DIR/flashmm_coef.bin.
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]
meta <- read.table(file.path(dir, "meta.txt"), header = TRUE)
p <- meta$p; q <- meta$q; G <- meta$G; n <- meta$n
d <- as.integer(strsplit(as.character(meta$d), "-")[[1]])
rd <- function(name, nr, nc) {
  x <- readBin(file.path(dir, paste0(name, ".bin")), "double", n = nr * nc, endian = "little")
  matrix(x, nr, nc)
}
# files are C-order dumps: a C-order r × c array read as an R c × r matrix is its transpose.
# XY.bin and ZY.bin hold the gene-major G × p and G × q arrays, so they read as p × G and q × G.
XX <- t(rd("XX", p, p)); XY <- rd("XY", p, G); ZX <- t(rd("ZX", p, q))
ZY <- rd("ZY", q, G); ZZ <- t(rd("ZZ", q, q)); Ynorm <- rd("Ynorm", G, 1)[, 1]
suppressPackageStartupMessages(library(FLASHMM))
elapsed <- system.time(
  fit <- lmm(XX, XY, ZX, ZY, ZZ, Ynorm = Ynorm, n = n, d = d, method = meta$method,
             max.iter = 50, epsilon = 1e-5)
)[["elapsed"]]
writeLines(format(elapsed, digits = 10), file.path(dir, "flashmm_time.txt"))
writeBin(as.double(fit$theta), file.path(dir, "flashmm_theta.bin"), endian = "little")
writeBin(as.double(fit$coef), file.path(dir, "flashmm_coef.bin"), endian = "little")
