# REML reference fits from glmmTMB for tests/test_nbmm_reml.py.
#
# Run from the repository root (after make_fixtures.R, whose data.csv and spec.csv it reads):
#     Rscript tests/data/glmmtmb-1.1.5/make_reml_fixtures.R
#
# Every gene of the six scenarios is fitted with
#     glmmTMB(y ~ <fixed> + (1 | donor) + offset(log(s)), family = nbinom2, REML = TRUE)
# With REML = TRUE glmmTMB adds "beta" to TMB's random parameters: the Laplace approximation
# integrates over (beta, b) jointly (beta with a flat prior) and nlminb maximises the result
# over the two outer parameters, log(sigma) ("theta") and log(theta) ("betad"). That optimum is
# polished by Newton steps on fit$obj as in make_fixtures.R (common.R's polish), and
# TMB::sdreport(getJointPrecision = TRUE) is rerun there; the fixed effects are then the inner
# mode of beta (sdreport's par.random) and their covariance is what vcov.glmmTMB returns in
# REML mode (the beta block of the inverse of sdreport's joint precision), obtained by calling
# vcov() on the fit with its sdr replaced by the polished one. Writes <scenario>/reml.csv:
#   gene, term, estimate, se, estimate_nlminb, cov_log_sigma, cov_log_theta (the beta rows of
#   vcov(fit, full = TRUE) in the log(sigma) and log(theta) columns), logLik (the REML objective, -fit$obj$fn),
#   log_sigma, log_sigma_se, log_theta, log_theta_se (sdreport's cov.fixed), max_abs_grad,
#   pdHess (of the polished sdreport); one row per gene and term.

suppressPackageStartupMessages(library(glmmTMB))

out_root <- file.path("tests", "data", "glmmtmb-1.1.5")
if (!dir.exists(out_root)) stop("run from the repository root")

source(file.path(out_root, "common.R"))  # ctrl, polish, write_csv

for (name in c("high", "low", "unbalanced", "cellcov", "few", "many")) {
  dir <- file.path(out_root, name)
  spec <- read.csv(file.path(dir, "spec.csv"), stringsAsFactors = FALSE)
  data <- read.csv(file.path(dir, "data.csv"), stringsAsFactors = FALSE)
  data$donor <- factor(data$donor)
  rows <- list()
  for (g in strsplit(spec$genes, ";")[[1]]) {
    form <- as.formula(sprintf("%s %s + (1 | donor) + offset(log(s))", g, spec$fixed))
    fit <- glmmTMB(form, data = data, family = nbinom2, control = ctrl, REML = TRUE)
    stopifnot("beta" %in% fit$obj$env$.random)
    nm <- names(fit$fit$par)
    par <- polish(fit$obj, fit$fit$par)
    names(par) <- nm
    sdr <- TMB::sdreport(fit$obj, par.fixed = par, getJointPrecision = TRUE)
    fit$sdr <- sdr
    cf <- fixef(fit)$cond
    V <- vcov(fit)$cond
    Vf <- vcov(fit, full = TRUE)
    isig <- grep("^theta_", colnames(Vf))
    ithe <- grep("^d~", colnames(Vf))
    stopifnot(length(isig) == 1, length(ithe) == 1)
    stopifnot(max(abs(Vf[seq_along(cf), seq_along(cf)] - V)) == 0)
    se_out <- sqrt(diag(sdr$cov.fixed))
    rnm <- names(sdr$par.random)
    beta <- unname(sdr$par.random[rnm == "beta"])
    stopifnot(length(beta) == length(cf), identical(colnames(V), names(cf)))
    rows[[length(rows) + 1]] <- data.frame(
      gene = g, term = names(cf), estimate = beta, se = unname(sqrt(diag(V))),
      estimate_nlminb = unname(cf), cov_log_sigma = unname(Vf[seq_along(cf), isig]),
      cov_log_theta = unname(Vf[seq_along(cf), ithe]), logLik = as.numeric(-fit$obj$fn(par)),
      log_sigma = unname(par[nm == "theta"]), log_sigma_se = unname(se_out[nm == "theta"]),
      log_theta = unname(par[nm == "betad"]), log_theta_se = unname(se_out[nm == "betad"]),
      max_abs_grad = max(abs(fit$obj$gr(par))), pdHess = sdr$pdHess
    )
  }
  write_csv(do.call(rbind, rows), file.path(dir, "reml.csv"))
}
