# lmerTest Satterthwaite tests of contrasts (single-row t and multi-row F) on the lme4 fixtures.
# Run from the repository root after make_fixtures.R:
#   Rscript tests/data/lme4-1.1.31/make_contrast_fixtures.R
# Reads <scenario>/data.csv.gz and spec.csv, refits every gene by REML with the same control as
# make_fixtures.R and writes <scenario>/contrasts.csv: for each gene and contrast, the estimate,
# its standard error, t or F, the denominator df and the p-value from lmerTest::contest.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})
root <- "tests/data/lme4-1.1.31"
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e5))
contrasts <- list(
  k1 = list(
    diff = rbind(c(0, 0, 1, -1)),                  # x2b - x2c
    avg = rbind(c(1, 0.5, 0.25, 0.25)),            # intercept + x1/2 + (x2b + x2c)/4
    joint = rbind(c(0, 0, 1, 0), c(0, 0, 0, 1))    # x2b = x2c = 0 (2-df F test)
  ),
  between = list(
    trt = rbind(c(0, 1, 0)),                       # trtstim
    joint = rbind(c(0, 1, 0), c(0, 0, 1))          # trtstim = log(libsize) = 0
  ),
  k2_crossed = list(
    joint = rbind(c(1, 0), c(0, 1))                # intercept = x1 = 0
  )
)
for (scenario in names(contrasts)) {
  dir <- file.path(root, scenario)
  spec <- read.csv(file.path(dir, "spec.csv"), stringsAsFactors = FALSE)
  data <- read.csv(file.path(dir, "data.csv.gz"), stringsAsFactors = FALSE)
  genes <- strsplit(spec$genes, ";")[[1]]
  random <- strsplit(spec$random, ";")[[1]]
  rows <- list()
  for (gene in genes) {
    y <- data[[gene]]
    if (spec$transform == "log2p1") y <- log2(1 + y)
    data$y <- y
    form <- as.formula(paste("y", spec$fixed, "+", paste0("(1|", random, ")", collapse = " + ")))
    fit <- lmerTest::lmer(form, data = data, REML = TRUE, control = ctrl)
    for (name in names(contrasts[[scenario]])) {
      L <- contrasts[[scenario]][[name]]
      res <- contest(fit, L, joint = nrow(L) > 1, ddf = "Satterthwaite")
      if (nrow(L) == 1) {
        rows[[length(rows) + 1]] <- data.frame(
          gene = gene, contrast = name, estimate = res$Estimate, se = res$`Std. Error`,
          stat = res$`t value`, df = res$df, p_value = res$`Pr(>|t|)`, singular = isSingular(fit))
      } else {
        rows[[length(rows) + 1]] <- data.frame(
          gene = gene, contrast = name, estimate = NA, se = NA, stat = res$`F value`,
          df = res$DenDF, p_value = res$`Pr(>F)`, singular = isSingular(fit))
      }
    }
  }
  out <- do.call(rbind, rows)
  L_rows <- lapply(names(contrasts[[scenario]]), function(n) {
    L <- contrasts[[scenario]][[n]]
    data.frame(contrast = n, row = seq_len(nrow(L)), L)
  })
  write.csv(out, file.path(dir, "contrasts.csv"), row.names = FALSE)
  write.csv(do.call(rbind, L_rows), file.path(dir, "contrast_matrices.csv"), row.names = FALSE)
}
