# Reference fits from glmmTMB (negative-binomial GLMM, Laplace approximation) for
# tests/test_nbmm.py.
#
# Run from the repository root:
#     Rscript tests/data/glmmtmb-1.1.5/make_fixtures.R
#
# Each scenario simulates a small data set (fixed seed) and fits every gene with
#     glmmTMB(y ~ <fixed> + (1 | donor) + offset(log(s)), family = nbinom2)
# (NB2: Var = mu + mu^2 / theta, i.e. alpha = 1/theta; glmmTMB's parameters are beta, log(theta)
# and log(sigma) of the donor intercept), then writes, in tests/data/glmmtmb-1.1.5/<scenario>/:
#   data.csv   cell-level data: donor, covariates, size factor s, one column per gene (counts)
#   fixef.csv  gene, term, estimate, se                 (se from sdreport's cov.fixed)
#   fit.csv    gene, logLik, log_sigma, log_sigma_se, log_theta, log_theta_se, max_abs_grad,
#              opt_convergence, opt_message, pdHess
#   spec.csv   fixed formula, genes, control
# Numbers are written with 17 significant digits (exact round trip of doubles); covariates and
# size factors are rounded before fitting so that the CSV holds exactly the values glmmTMB saw.

suppressPackageStartupMessages(library(glmmTMB))

out_root <- file.path("tests", "data", "glmmtmb-1.1.5")
if (!dir.exists(out_root)) stop("run from the repository root")

source(file.path(out_root, "common.R"))  # ctrl, polish, write_csv

fit_scenario <- function(name, data, genes, rhs_fixed) {
  dir <- file.path(out_root, name)
  dir.create(dir, showWarnings = FALSE)
  fixef_rows <- list()
  fit_rows <- list()
  for (g in genes) {
    form <- as.formula(sprintf("%s ~ %s + (1 | donor) + offset(log(s))", g, rhs_fixed))
    fit <- glmmTMB(form, data = data, family = nbinom2, control = ctrl)
    nm <- names(fit$fit$par)
    grad0 <- fit$obj$gr(fit$fit$par)
    par <- polish(fit$obj, fit$fit$par)
    names(par) <- nm
    sdr <- TMB::sdreport(fit$obj, par.fixed = par)
    se <- sqrt(diag(sdr$cov.fixed))
    stopifnot(identical(nm, names(se)))
    ib <- which(nm == "beta")
    cf <- fixef(fit)$cond
    stopifnot(sum(ib) > 0, length(ib) == length(cf))
    fixef_rows[[length(fixef_rows) + 1]] <- data.frame(
      gene = g, term = names(cf), estimate = unname(par[ib]), se = unname(se[ib]),
      estimate_nlminb = unname(cf)
    )
    grad <- fit$obj$gr(par)
    fit_rows[[length(fit_rows) + 1]] <- data.frame(
      gene = g, logLik = -fit$obj$fn(par), logLik_nlminb = as.numeric(logLik(fit)),
      log_sigma = unname(par[nm == "theta"]), log_sigma_se = unname(se[nm == "theta"]),
      log_theta = unname(par[nm == "betad"]), log_theta_se = unname(se[nm == "betad"]),
      max_abs_grad = max(abs(grad)), max_abs_grad_nlminb = max(abs(grad0)),
      pdHess_polished = sdr$pdHess,
      opt_convergence = fit$fit$convergence, opt_message = fit$fit$message,
      pdHess = fit$sdr$pdHess
    )
  }
  write_csv(do.call(rbind, fixef_rows), file.path(dir, "fixef.csv"))
  write_csv(do.call(rbind, fit_rows), file.path(dir, "fit.csv"))
  write_csv(data.frame(
    fixed = paste("~", rhs_fixed), genes = paste(genes, collapse = ";"),
    control = "glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-12))",
    polish = "Newton on fit$obj (numDeriv::jacobian of fit$obj$gr) to max |gradient| < 1e-9"
  ), file.path(dir, "spec.csv"))
  write_csv(data, file.path(dir, "data.csv"))
  invisible(NULL)
}

# Simulate counts: donors with `sizes` cells, donor-level condition (first half 0, second 1),
# a cell-level covariate z, size factors rounded to 1 decimal (so cells share them), NB2 counts
# with log mu = b0 + b1 * cond + b2 * z + log s + u_donor, u ~ N(0, sigma2).
simulate <- function(sizes, genes, b0, b1, b2 = 0, sigma2, alpha, sf_sd = 0.3) {
  k <- length(sizes)
  donor <- rep(sprintf("d%02d", seq_len(k)), sizes)
  cond <- rep(as.numeric(seq_len(k) > k %/% 2), sizes)
  z <- round(rnorm(sum(sizes)), 2)
  s <- pmax(round(exp(rnorm(sum(sizes), 0, sf_sd)), 1), 0.1)
  data <- data.frame(donor = factor(donor), cond = cond, z = z, s = s)
  for (i in seq_along(genes)) {
    u <- rnorm(k, 0, sqrt(sigma2[i]))[as.integer(data$donor)]
    mu <- exp(b0[i] + b1[i] * cond + b2 * z + log(s) + u)
    data[[genes[i]]] <- rnbinom(length(mu), mu = mu, size = 1 / alpha[i])
  }
  data
}

genes <- sprintf("g%d", 1:6)

# --- high: 10 donors x 30 cells, high counts --------------------------------------------------
set.seed(20261207)
d <- simulate(rep(30, 10), genes, b0 = log(c(20, 50, 10, 30, 15, 80)),
  b1 = c(0, 0.5, -0.3, 0.2, 0, 1), sigma2 = c(0.3, 0.1, 0.5, 0.2, 0.05, 0.3),
  alpha = c(0.2, 0.1, 0.3, 0.05, 0.5, 0.15))
fit_scenario("high", d, genes, "cond")

# --- low: 10 donors x 30 cells, low counts with many zeros ------------------------------------
set.seed(20261208)
d <- simulate(rep(30, 10), genes, b0 = log(c(0.3, 0.5, 0.2, 1, 0.4, 0.8)),
  b1 = c(0, 0.5, 0.3, -0.4, 0, 0.7), sigma2 = c(0.3, 0.2, 0.5, 0.3, 0.4, 0.2),
  alpha = c(0.5, 0.3, 1, 0.2, 0.7, 0.4))
fit_scenario("low", d, genes, "cond")

# --- unbalanced: 8 donors of 3 to 60 cells ---------------------------------------------------
set.seed(20261209)
d <- simulate(c(3, 60, 12, 25, 40, 5, 33, 18), genes, b0 = log(c(2, 5, 1, 8, 3, 12)),
  b1 = c(0, 0.4, -0.5, 0.3, 0, 0.8), sigma2 = c(0.2, 0.3, 0.4, 0.1, 0.3, 0.2),
  alpha = c(0.3, 0.2, 0.5, 0.1, 0.4, 0.2))
fit_scenario("unbalanced", d, genes, "cond")

# --- cellcov: 12 donors x 25 cells, condition and a cell-level covariate z --------------------
set.seed(20261210)
d <- simulate(rep(25, 12), genes, b0 = log(c(3, 6, 1.5, 10, 4, 2)),
  b1 = c(0, 0.3, -0.4, 0.5, 0.2, 0), b2 = 0.3, sigma2 = c(0.2, 0.3, 0.1, 0.4, 0.25, 0.3),
  alpha = c(0.3, 0.2, 0.4, 0.1, 0.3, 0.5))
fit_scenario("cellcov", d, genes, "cond + z")

# --- few: 4 donors x 40 cells ------------------------------------------------------------------
set.seed(20261211)
d <- simulate(rep(40, 4), genes, b0 = log(c(4, 8, 2, 15, 5, 3)),
  b1 = c(0, 0.5, -0.3, 0.4, 0, 0.6), sigma2 = c(0.3, 0.2, 0.4, 0.3, 0.5, 0.2),
  alpha = c(0.3, 0.2, 0.4, 0.1, 0.3, 0.5))
fit_scenario("few", d, genes, "cond")

# --- many: 40 donors x 8 cells -----------------------------------------------------------------
set.seed(20261212)
d <- simulate(rep(8, 40), genes, b0 = log(c(4, 8, 2, 15, 5, 3)),
  b1 = c(0, 0.5, -0.3, 0.4, 0, 0.6), sigma2 = c(0.3, 0.2, 0.4, 0.3, 0.5, 0.2),
  alpha = c(0.3, 0.2, 0.4, 0.1, 0.3, 0.5))
fit_scenario("many", d, genes, "cond")

writeLines(capture.output(sessionInfo()), file.path(out_root, "sessionInfo.txt"))
