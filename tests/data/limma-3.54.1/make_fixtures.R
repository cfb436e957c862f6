# Reference output of limma::squeezeVar for tests/test_ebayes.py.
#
# Run from the repository root:
#     Rscript tests/data/limma-3.54.1/make_fixtures.R
#
# Draws several sets of gene-wise variances s2 with gene-specific, non-integer degrees of freedom
# (as Satterthwaite's df of an LMM contrast would be), moderates each set with
# limma::squeezeVar(robust = FALSE) and (robust = TRUE), and writes, in
# tests/data/limma-3.54.1/:
#   variances.csv   set, gene, s2, df                       (the inputs)
#   squeezevar.csv  set, robust, gene, df_prior, var_post   (per-gene outputs)
#   prior.csv       set, robust, var_prior, df_prior        (df_prior NA when robust: per gene)
#   warnings.csv    set, robust, message                    (warnings limma gave, if any)
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

# Variances from limma's model: sigma_g^2 = s0^2 d0 / chi2_d0 (d0 = Inf: sigma_g^2 = s0^2),
# s2_g = sigma_g^2 chi2_{d_g} / d_g.
draw <- function(df, s0sq, d0) {
  n <- length(df)
  sigma2 <- if (is.finite(d0)) s0sq * d0 / rchisq(n, d0) else rep(s0sq, n)
  dfi <- ifelse(is.finite(df), df, 1e8)
  sigma2 * rchisq(n, dfi) / dfi
}

sets <- list()

# 1. Satterthwaite-like df between 2 and 60, moderate prior
set.seed(20260501)
df <- runif(1000, 2, 60)
sets$satterthwaite <- list(s2 = draw(df, 0.5, 6), df = df)

# 2. special values: infinite df, NaN variances, zero variances, zero df
set.seed(20260502)
df <- runif(500, 3, 40)
s2 <- draw(df, 2, 4)
df[c(11, 57, 230, 401, 480)] <- Inf
s2[c(11, 57, 230, 401, 480)] <- 2 * rchisq(5, 1e8) / 1e8
s2[c(5, 120, 333)] <- NaN
s2[c(42, 250, 499)] <- 0
df[c(77, 300)] <- 0
sets$special <- list(s2 = s2, df = df)

# 3. outlier genes: 25 variances inflated 10-60 times
set.seed(20260503)
df <- runif(800, 2, 60)
s2 <- draw(df, 1, 10)
out <- sample(800, 25)
s2[out] <- s2[out] * runif(25, 10, 60)
sets$outliers <- list(s2 = s2, df = df)

# 4. one common variance: d0 is estimated infinite
set.seed(20260504)
df <- runif(300, 2, 60)
sets$d0_infinite <- list(s2 = draw(df, 0.8, Inf), df = df)

# 5. one common variance and df plus a few outliers (robust: d0 infinite, outliers shrunk)
set.seed(20260506)
df <- rep(8, 400)
s2 <- draw(df, 0.8, Inf)
s2[c(3, 150, 390)] <- s2[c(3, 150, 390)] * c(8, 15, 30)
sets$d0_infinite_outliers <- list(s2 = s2, df = df)

# 6. a common integer df (limma's usual case), small prior df
set.seed(20260506)
df <- rep(4, 200)
sets$common_df <- list(s2 = draw(df, 3, 2.5), df = df)

# 7. many genes, wide df range, large prior df
set.seed(20260507)
df <- exp(runif(1500, log(2), log(60)))
sets$large <- list(s2 = draw(df, 0.05, 25), df = df)

var_rows <- list()
sq_rows <- list()
prior_rows <- list()
warn_rows <- list()
for (name in names(sets)) {
  s2 <- round17(sets[[name]]$s2)
  df <- round17(sets[[name]]$df)
  n <- length(s2)
  var_rows[[name]] <- data.frame(set = name, gene = seq_len(n), s2 = s2, df = df)
  for (robust in c(FALSE, TRUE)) {
    msgs <- character(0)
    sv <- withCallingHandlers(
      squeezeVar(s2, df, robust = robust),
      warning = function(w) {
        msgs <<- c(msgs, conditionMessage(w))
        invokeRestart("muffleWarning")
      }
    )
    sq_rows[[length(sq_rows) + 1]] <- data.frame(
      set = name, robust = robust, gene = seq_len(n),
      df_prior = rep_len(sv$df.prior, n), var_post = sv$var.post
    )
    prior_rows[[length(prior_rows) + 1]] <- data.frame(
      set = name, robust = robust, var_prior = sv$var.prior,
      df_prior = if (robust) NA_real_ else sv$df.prior
    )
    if (length(msgs)) {
      warn_rows[[length(warn_rows) + 1]] <- data.frame(set = name, robust = robust, message = msgs)
    }
  }
}

write_csv(do.call(rbind, var_rows), "variances.csv")
write_csv(do.call(rbind, sq_rows), "squeezevar.csv")
write_csv(do.call(rbind, prior_rows), "prior.csv")
write_csv(do.call(rbind, warn_rows), "warnings.csv")

cat(R.version.string, "\n")
cat("limma", as.character(packageVersion("limma")), "\n")
cat("statmod", as.character(packageVersion("statmod")), "\n")
