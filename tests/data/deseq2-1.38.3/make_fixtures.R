#!/usr/bin/env Rscript
# Reference fixtures for tests/nbglm: R DESeq2 (Debian r-bioc-deseq2) on simulated NB data.
# Run:  Rscript tests/data/deseq2-1.38.3/make_fixtures.R [scenario ...]
# (writes one folder per scenario next to this script; with names, only those scenarios)
suppressPackageStartupMessages(library(DESeq2))
file_arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
setwd(dirname(normalizePath(sub("^--file=", "", file_arg))))
only <- commandArgs(trailingOnly = TRUE)
known <- c("two_group", "multi_factor", "continuous", "small_sample", "outliers", "lrt",
           "flat_dispersion", "pseudobulk_2000x250", "single_cell", "outliers_low_minmu",
           "iterate_size_factors")
if (length(setdiff(only, known)) > 0) stop("unknown scenario: ", setdiff(only, known))

sim <- function(G, coldata, mm, lfc_sd = 0.6, frac_de = 0.2, seed = 1,
                disp_fun = function(mu) 0.05 + 1 / mu, sf_sd = 0.3,
                disp_sd = 0.7, base_mean = 80, base_sd = 1.6) {
  set.seed(seed)
  m <- nrow(coldata)
  base <- exp(rnorm(G, log(base_mean), base_sd))
  beta <- matrix(0, G, ncol(mm))
  if (ncol(mm) > 1) {
    de <- runif(G * (ncol(mm) - 1)) < frac_de
    beta[, -1] <- ifelse(de, rnorm(G * (ncol(mm) - 1), 0, lfc_sd), 0)
  }
  sf <- exp(rnorm(m, 0, sf_sd))
  mu <- base * exp(beta %*% t(mm)) * matrix(sf, G, m, byrow = TRUE)
  disp <- disp_fun(base) * exp(rnorm(G, 0, disp_sd))
  cts <- matrix(rnbinom(G * m, mu = mu, size = 1 / disp), G, m)
  storage.mode(cts) <- "integer"
  cts[1:3, ] <- 0L                     # all-zero genes
  colnames(cts) <- paste0("s", seq_len(m)); rownames(cts) <- paste0("g", seq_len(G))
  cts
}

run <- function(name, cts, coldata, design, test = "Wald", reduced = NULL, res_name = NULL, ...) {
  if (length(only) > 0 && !(name %in% only)) return(invisible(NULL))
  dir.create(name, showWarnings = FALSE)
  dds <- DESeqDataSetFromMatrix(cts, coldata, design)
  dds <- if (test == "Wald") DESeq(dds, quiet = TRUE, ...) else
    DESeq(dds, test = "LRT", reduced = reduced, quiet = TRUE, ...)
  res <- if (is.null(res_name)) results(dds) else results(dds, name = res_name)
  mc <- mcols(dds)
  out <- data.frame(baseMean = res$baseMean, log2FoldChange = res$log2FoldChange,
                    lfcSE = res$lfcSE, stat = res$stat, pvalue = res$pvalue, padj = res$padj,
                    dispGeneEst = mc$dispGeneEst, dispFit = mc$dispFit,
                    dispersion = mc$dispersion, dispMAP = mc$dispMAP,
                    dispOutlier = mc$dispOutlier, dispGeneIter = mc$dispGeneIter,
                    maxCooks = mc$maxCooks,
                    replace = if (is.null(mc$replace)) NA else mc$replace,
                    betaConv = if (test == "Wald") mc$betaConv else mc$fullBetaConv)
  write.csv(out, file.path(name, "results.csv"), row.names = FALSE)
  gz <- gzfile(file.path(name, "counts.csv.gz"), "w")
  write.csv(cts, gz); close(gz)
  mm <- model.matrix(design(dds), as.data.frame(colData(dds)))
  write.csv(mm, file.path(name, "design.csv"), row.names = FALSE)
  if (!is.null(reduced)) {
    write.csv(model.matrix(reduced, as.data.frame(colData(dds))),
              file.path(name, "reduced.csv"), row.names = FALSE)
  }
  df <- dispersionFunction(dds)
  info <- data.frame(key = c("fitType", "dispPriorVar", "varLogDispEsts", "coef", "filterThreshold"),
                     value = c(attr(df, "fitType"), attr(df, "dispPriorVar"),
                               attr(df, "varLogDispEsts"), resultsNames(dds)[ncol(mm)],
                               metadata(res)$filterThreshold))
  write.csv(info, file.path(name, "info.csv"), row.names = FALSE)
  write.csv(data.frame(sizeFactor = sizeFactors(dds)), file.path(name, "size_factors.csv"),
            row.names = FALSE)
  cat(name, ":", attr(df, "fitType"), " priorVar", attr(df, "dispPriorVar"),
      " replaced", sum(mc$replace, na.rm = TRUE), " NA p", sum(is.na(res$pvalue)), "\n")
}

# 1. two groups, 6 vs 6
cd <- data.frame(cls = factor(rep(c("A", "B"), each = 6)))
cts <- sim(800, cd, model.matrix(~cls, cd), seed = 11)
run("two_group", cts, cd, ~cls)

# 2. multi-factor ~ cls + trt (3 x 2, 4 replicates)
cd <- data.frame(cls = factor(rep(c("a", "b", "c"), each = 8)), trt = factor(rep(rep(c("A", "B"), each = 4), 3)))
cts <- sim(800, cd, model.matrix(~cls + trt, cd), seed = 12)
run("multi_factor", cts, cd, ~cls + trt)

# 3. continuous covariate
set.seed(3)
cd <- data.frame(x = round(rnorm(20), 3))
cts <- sim(700, cd, model.matrix(~x, cd), seed = 13, lfc_sd = 0.4)
run("continuous", cts, cd, ~x)

# 4. small sample: 2 vs 2 (m - p = 2, Monte-Carlo prior variance)
cd <- data.frame(cls = factor(rep(c("A", "B"), each = 2)))
cts <- sim(700, cd, model.matrix(~cls, cd), seed = 14)
run("small_sample", cts, cd, ~cls)

# 5. outliers: 8 vs 8 with injected outlier counts (replacement and refit)
cd <- data.frame(cls = factor(rep(c("A", "B"), each = 8)))
cts <- sim(800, cd, model.matrix(~cls, cd), seed = 15)
set.seed(5)
og <- sample(4:800, 60)
for (g in og) { j <- sample(16, 1); cts[g, j] <- as.integer(cts[g, j] * 20 + 50) }
run("outliers", cts, cd, ~cls)

# 6. LRT ~ cls + trt vs ~ cls
cd <- data.frame(cls = factor(rep(c("a", "b", "c"), each = 8)), trt = factor(rep(rep(c("A", "B"), each = 4), 3)))
cts <- sim(800, cd, model.matrix(~cls + trt, cd), seed = 16)
run("lrt", cts, cd, ~cls + trt, test = "LRT", reduced = ~cls)

# 7. flat dispersions (parametric trend fails, local fit used)
cd <- data.frame(cls = factor(rep(c("A", "B"), each = 10)), trt = factor(rep(c("A", "B"), 10)))
cts <- sim(800, cd, model.matrix(~cls + trt, cd), seed = 17,
           disp_fun = function(mu) 0.02 * (mu / 80)^0.6, disp_sd = 0.3)
run("flat_dispersion", cts, cd, ~cls + trt)

# 8. pseudobulk-sized: 2000 genes x 250 samples, ~ cls + trt (slow tests, benchmark)
set.seed(8)
cd <- data.frame(cls = factor(sample(c("c1", "c2", "c3", "c4", "c5"), 250, TRUE)),
                 trt = factor(sample(c("A", "B"), 250, TRUE)))
cts <- sim(2000, cd, model.matrix(~cls + trt, cd), seed = 18, sf_sd = 0.5,
           disp_fun = function(mu) 0.03 + 0.5 / mu)
run("pseudobulk_2000x250", cts, cd, ~cls + trt)

# 9. single-cell settings (DESeq2's advice for single-cell counts): low counts with many zeros,
# poscounts size factors, minmu = 1e-6, LRT against ~ 1, no outlier replacement
cd <- data.frame(cls = factor(rep(c("A", "B"), each = 100)))
cts <- sim(400, cd, model.matrix(~cls, cd), seed = 19, base_mean = 0.8, base_sd = 1.2,
           sf_sd = 0.5, disp_fun = function(mu) 0.1 + 0.5 / mu, disp_sd = 0.5)
set.seed(9)                            # outliers: NA p-values, never replaced here
for (g in sample(4:400, 12)) { j <- sample(200, 1); cts[g, j] <- cts[g, j] + 60L }
run("single_cell", cts, cd, ~cls, test = "LRT", reduced = ~1, sfType = "poscounts",
    minmu = 1e-6, minReplicatesForReplace = Inf)

# 10. outliers with minmu = 1e-6 (low counts): DESeq() floors the final GLM at minmu, but its
# refit of replaced genes (refitWithoutOutliers) uses the default minmu = 0.5
cd <- data.frame(cls = factor(rep(c("A", "B"), each = 10)))
cts <- sim(600, cd, model.matrix(~cls, cd), seed = 20, base_mean = 3, base_sd = 1.2)
set.seed(10)
for (g in sample(4:600, 60)) { j <- sample(20, 1); cts[g, j] <- as.integer(cts[g, j] * 20 + 40) }
run("outliers_low_minmu", cts, cd, ~cls, minmu = 1e-6)

# 11. DESeq2's iterative size factors (type = "iterate") on the two-group counts
if (length(only) == 0 || "iterate_size_factors" %in% only) {
  cd <- data.frame(cls = factor(rep(c("A", "B"), each = 6)))
  cts <- sim(800, cd, model.matrix(~cls, cd), seed = 11)
  dds <- estimateSizeFactors(DESeqDataSetFromMatrix(cts, cd, ~cls), type = "iterate")
  dir.create("iterate_size_factors", showWarnings = FALSE)
  write.csv(data.frame(sizeFactor = sizeFactors(dds)),
            file.path("iterate_size_factors", "size_factors.csv"), row.names = FALSE)
  cat("iterate_size_factors:", signif(sizeFactors(dds), 6), "\n")
}
writeLines(capture.output(sessionInfo()), "sessionInfo.txt")
