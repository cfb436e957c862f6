# Time lme4::lmer per gene for validation/runtime.py (lme4 must be installed).
# Usage: Rscript lme4_time.R DIR   DIR holds y.csv (cells x genes, no header), obs.csv (the
# design's columns; every column but libsize is a factor) and spec.txt (line 1: the lme4
# formula with response y; line 2: REML or ML). Prints the elapsed seconds of the fits alone.
dir <- commandArgs(trailingOnly = TRUE)[1]
spec <- readLines(file.path(dir, "spec.txt"))
Y <- as.matrix(read.csv(file.path(dir, "y.csv"), header = FALSE))
cd <- read.csv(file.path(dir, "obs.csv"), colClasses = "character")
for (v in names(cd)) cd[[v]] <- if (v == "libsize") as.numeric(cd[[v]]) else factor(cd[[v]])
suppressPackageStartupMessages(library(lme4))
form <- as.formula(spec[1])
reml <- spec[2] == "REML"
elapsed <- system.time(
  for (g in seq_len(ncol(Y))) {
    cd$y <- Y[, g]
    fit <- lmer(form, data = cd, REML = reml)
  }
)[["elapsed"]]
cat(format(elapsed, digits = 10), "\n")
