# Reduced-model fits from glmmTMB for the likelihood-ratio tests of tests/test_nbmm_inference.py.
#
# Run from the repository root, after make_fixtures.R:
#     Rscript tests/data/glmmtmb-1.1.5/make_lrt_fixtures.R
#
# For every scenario of make_fixtures.R, reads its data.csv and fits each gene without `cond`
#     glmmTMB(y ~ <fixed without cond> + (1 | donor) + offset(log(s)), family = nbinom2)
# (the reduced model of the test of cond: ~ 1, or ~ z for `cellcov`), polishes the optimum as
# make_fixtures.R does, and writes <scenario>/reduced.csv: gene, reduced formula, logLik of the
# reduced fit, its max |gradient|, the LR statistic 2 (logLik_full - logLik_reduced) with the full
# fit's polished logLik from fit.csv, and its chi-squared(1) p-value as R computes it.

suppressPackageStartupMessages(library(glmmTMB))

out_root <- file.path("tests", "data", "glmmtmb-1.1.5")
if (!dir.exists(out_root)) stop("run from the repository root")
source(file.path(out_root, "common.R"))  # ctrl, polish, write_csv

for (name in c("high", "low", "unbalanced", "cellcov", "few", "many")) {
  dir <- file.path(out_root, name)
  data <- read.csv(file.path(dir, "data.csv"))
  data$donor <- factor(data$donor)
  spec <- read.csv(file.path(dir, "spec.csv"))
  full <- read.csv(file.path(dir, "fit.csv"))
  terms <- setdiff(trimws(strsplit(sub("~", "", spec$fixed), "+", fixed = TRUE)[[1]]), "cond")
  rhs <- if (length(terms)) paste(terms, collapse = " + ") else "1"
  rows <- list()
  for (g in strsplit(spec$genes, ";")[[1]]) {
    form <- as.formula(sprintf("%s ~ %s + (1 | donor) + offset(log(s))", g, rhs))
    fit <- glmmTMB(form, data = data, family = nbinom2, control = ctrl)
    par <- polish(fit$obj, fit$fit$par)
    ll <- -fit$obj$fn(par)
    ll_full <- full$logLik[full$gene == g]
    lr <- 2 * (ll_full - ll)
    rows[[length(rows) + 1]] <- data.frame(
      gene = g, reduced = paste("~", rhs), logLik_reduced = ll,
      max_abs_grad = max(abs(fit$obj$gr(par))), lr_stat = lr,
      p_value = pchisq(lr, df = 1, lower.tail = FALSE)
    )
  }
  write_csv(do.call(rbind, rows), file.path(dir, "reduced.csv"))
}
