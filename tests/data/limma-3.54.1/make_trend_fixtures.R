# Reference output of limma::squeezeVar(..., covariate = ) (limma-trend) for tests/test_ebayes.py.
#
# Run from the repository root:
#     Rscript tests/data/limma-3.54.1/make_trend_fixtures.R
#
# Draws sets of gene-wise variances s2 with gene-specific, non-integer degrees of freedom whose
# typical size depends smoothly on a covariate A (as log-count variances depend on the mean
# expression), moderates each with limma::squeezeVar(s2, df, covariate = A) (robust = FALSE), and
# writes, in tests/data/limma-3.54.1/:
#   trend_variances.csv   set, gene, s2, df, covariate                  (the inputs)
#   trend_squeezevar.csv  set, gene, var_prior, var_post                (per-gene outputs)
#   trend_prior.csv       set, df_prior, spline_df                      (one row per set)
#   trend_warnings.csv    set, message                                  (warnings limma gave)
# spline_df is limma's choice, 1 + (n >= 3) + (n >= 6) + (n >= 30) for the n genes that enter
# the fit, capped by the number of distinct covariate values among them (fitFDist's rule,
# recomputed here for the tests' bookkeeping).
# Numbers are written with 17 significant digits (exact round trip of doubles); the inputs are
# rounded to them before squeezeVar sees them, so the CSV holds exactly what limma used.

suppressPackageStartupMessages(library(limma))

out_dir <- file.path("tests", "data", "limma-3.54.1")
if (!dir.exists(out_dir)) stop("run from the repository root")
if (as.character(packageVersion("limma")) != "3.54.1") stop("expected limma 3.54.1")

fmt <- function(df) {
  for (j in seq_along(df)) {
    if (is.double(df[[j]])) df[[j]] <- sprintf("%.17g", df[[j]])
  }
  df
}
write_csv <- function(df, name) {
  write.csv(fmt(df), file.path(out_dir, name), row.names = FALSE, quote = TRUE)
}
round17 <- function(x) as.numeric(sprintf("%.17g", x))

# The trend: a log-count-like mean-variance curve, high for lowly expressed genes, falling and
# levelling off with expression A.
trend <- function(a) 0.05 + 1.5 * exp(-0.8 * a)

# Variances from limma's model around the trend: sigma_g^2 = s0^2(A_g) d0 / chi2_d0
# (d0 = Inf: sigma_g^2 = s0^2(A_g)), s2_g = sigma_g^2 chi2_{d_g} / d_g.
draw <- function(a, df, d0) {
  n <- length(a)
  s0sq <- trend(a)
  sigma2 <- if (is.finite(d0)) s0sq * d0 / rchisq(n, d0) else s0sq
  dfi <- ifelse(is.finite(df), df, 1e8)
  sigma2 * rchisq(n, dfi) / dfi
}

sets <- list()

# 1. many genes (spline df 4), with the special values: NaN and zero variances, zero and
#    infinite df, ties in the covariate; the gene with the largest covariate has no variance,
#    so its prior is the spline continued linearly beyond the fitted range
set.seed(20260511)
n <- 2000
a <- runif(n, 0, 8)
a[1:300] <- round(a[1:300], 1) # ties
df <- runif(n, 2, 60)
s2 <- draw(a, df, 6)
s2[c(7, 450, 1201)] <- NaN
s2[c(33, 980)] <- 0
df[c(12, 1500)] <- Inf
s2[c(12, 1500)] <- trend(a[c(12, 1500)])
df[c(64, 777)] <- 0
a[1201] <- 9.5 # NaN variance, outside the range of the genes that enter the fit
sets$trend_2000 <- list(s2 = s2, df = df, covariate = a)

# 2. 200 genes (spline df 4), one covariate -Inf (moved to min - 1 by limma)
set.seed(20260512)
n <- 200
a <- runif(n, 0, 8)
df <- exp(runif(n, log(2), log(60)))
s2 <- draw(a, df, 10)
a[17] <- -Inf
sets$trend_200 <- list(s2 = s2, df = df, covariate = a)

# 3. 20 genes (spline df 3), one NaN variance at the smallest covariate
set.seed(20260513)
n <- 20
a <- runif(n, 0, 8)
df <- runif(n, 2, 60)
s2 <- draw(a, df, 5)
s2[which.min(a)] <- NaN
sets$trend_20 <- list(s2 = s2, df = df, covariate = a)

# 4. 5 genes (spline df 2: a straight line)
set.seed(20260514)
n <- 5
a <- runif(n, 0, 8)
df <- runif(n, 2, 60)
sets$trend_5 <- list(s2 = draw(a, df, 4), df = df, covariate = a)

# 5. 150 genes with 3 distinct covariate values (spline df capped at 3)
set.seed(20260515)
n <- 150
a <- sample(c(1, 2.5, 6), n, replace = TRUE)
df <- runif(n, 2, 60)
sets$three_levels <- list(s2 = draw(a, df, 8), df = df, covariate = a)

# 6. one covariate value for all (spline df 1: the fit without covariate)
set.seed(20260516)
n <- 60
a <- rep(3, n)
df <- runif(n, 2, 60)
sets$one_level <- list(s2 = draw(a, df, 8), df = df, covariate = a)

# 7. variances on the trend with less scatter than sampling explains: d0 = Inf, the prior is
#    the exponentiated spline itself
set.seed(20260517)
n <- 300
a <- runif(n, 0, 8)
df <- runif(n, 2, 60)
s2 <- trend(a) * exp(rnorm(n, 0, 0.05))
sets$trend_d0_infinite <- list(s2 = s2, df = df, covariate = a)

spline_df <- function(s2, df, covariate) {
  ok <- is.finite(df) & df > 1e-15 & is.finite(s2) & s2 > -1e-15
  nok <- sum(ok)
  cv <- covariate
  fin <- is.finite(cv)
  cv[cv == -Inf] <- min(cv[fin]) - 1
  cv[cv == Inf] <- max(cv[fin]) + 1
  min(1L + (nok >= 3L) + (nok >= 6L) + (nok >= 30L), length(unique(cv[ok])))
}

var_rows <- list()
sq_rows <- list()
prior_rows <- list()
warn_rows <- list()
for (name in names(sets)) {
  s2 <- round17(sets[[name]]$s2)
  df <- round17(sets[[name]]$df)
  covariate <- round17(sets[[name]]$covariate)
  n <- length(s2)
  var_rows[[name]] <- data.frame(set = name, gene = seq_len(n), s2 = s2, df = df,
                                 covariate = covariate)
  msgs <- character(0)
  sv <- withCallingHandlers(
    squeezeVar(s2, df, covariate = covariate),
    warning = function(w) {
      msgs <<- c(msgs, conditionMessage(w))
      invokeRestart("muffleWarning")
    }
  )
  sq_rows[[name]] <- data.frame(
    set = name, gene = seq_len(n),
    var_prior = rep_len(sv$var.prior, n), var_post = sv$var.post
  )
  prior_rows[[name]] <- data.frame(set = name, df_prior = sv$df.prior,
                                   spline_df = spline_df(s2, df, covariate))
  if (length(msgs)) warn_rows[[name]] <- data.frame(set = name, message = msgs)
}

write_csv(do.call(rbind, var_rows), "trend_variances.csv")
write_csv(do.call(rbind, sq_rows), "trend_squeezevar.csv")
write_csv(do.call(rbind, prior_rows), "trend_prior.csv")
write_csv(if (length(warn_rows)) do.call(rbind, warn_rows) else
  data.frame(set = character(0), message = character(0)), "trend_warnings.csv")

cat(R.version.string, "\n")
cat("limma", as.character(packageVersion("limma")), "\n")
