# Time DESeq2::DESeq and glmGamPoi::glm_gp on the same counts, for benchmarks/bench_nbglm.py
# and validation/runtime.py (through validation/r_tools.py). DESeq2 and glmGamPoi must be
# installed (R_LIBS may point to them).
# Usage: Rscript deseq2_glmgampoi_time.R COUNTS.csv COLDATA.csv CELL NGENES
#   COUNTS.csv  samples (or cells) x genes, integers, no header
#   COLDATA.csv the design's columns with a header: cls (and trt unless CELL), read as factors
#   CELL        1: cell level, design ~cls, poscounts size factors, minmu 1e-6, no outlier
#               replacement; 0: pseudobulk, design ~cls + trt, DESeq2's defaults
#   NGENES      DESeq2 is timed on the first NGENES genes (glmGamPoi on all of them)
# Prints the elapsed seconds of DESeq() and of glm_gp() (the fits alone), on one line.
suppressPackageStartupMessages({library(DESeq2); library(glmGamPoi)})
a <- commandArgs(TRUE); cts <- t(as.matrix(read.csv(a[1], header = FALSE)))
cd <- read.csv(a[2], stringsAsFactors = TRUE); cell <- a[3] == "1"
nsub <- min(as.integer(a[4]), nrow(cts))
des <- if (cell) ~cls else ~cls + trt
storage.mode(cts) <- "integer"
dds <- DESeqDataSetFromMatrix(cts[seq_len(nsub), , drop = FALSE], cd, des)
t1 <- system.time({
  if (cell) { dds <- estimateSizeFactors(dds, type = "poscounts")
              dds <- DESeq(dds, minmu = 1e-6, minReplicatesForReplace = Inf, quiet = TRUE)
  } else dds <- DESeq(dds, quiet = TRUE)
})[["elapsed"]]
mm <- model.matrix(des, cd)
t2 <- system.time(glm_gp(cts, design = mm, size_factors = "normed_sum"))[["elapsed"]]
cat(t1, t2, "\n")
