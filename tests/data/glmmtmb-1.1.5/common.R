# Shared by make_fixtures.R and make_lrt_fixtures.R: the optimiser control, the polishing
# of the optimum and the CSV writer (17 significant digits).

# Outer optimiser (nlminb) with a tighter relative tolerance than the default (1e-10); tighter
# still ends in nlminb's "singular convergence (7)" with gradients up to 7e-4. The optimum is
# then polished by Newton steps on glmmTMB's own objective (TMB's Laplace approximation,
# fit$obj$fn / fit$obj$gr, Hessian by numDeriv::jacobian of the TMB gradient) until the largest
# gradient component is below 1e-9 (or 8 steps), and sdreport is rerun there: the fixture is
# the maximum of glmmTMB's Laplace log-likelihood, not nlminb's stopping point.
ctrl <- glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-12))

polish <- function(obj, par) {
  for (it in 1:8) {
    g <- obj$gr(par)
    if (max(abs(g)) < 1e-9) break
    h <- numDeriv::jacobian(obj$gr, par)
    h <- (h + t(h)) / 2
    step <- tryCatch(solve(h, as.numeric(g)), error = function(e) NULL)
    if (is.null(step) || any(!is.finite(step))) break
    cand <- par - step
    if (!is.finite(obj$fn(cand)) || obj$fn(cand) > obj$fn(par) + 1e-12) break
    par <- cand
  }
  par
}

fmt <- function(df) {
  for (j in seq_along(df)) {
    if (is.double(df[[j]])) df[[j]] <- sprintf("%.17g", df[[j]])
  }
  df
}

write_csv <- function(df, path) write.csv(fmt(df), path, row.names = FALSE, quote = TRUE)

