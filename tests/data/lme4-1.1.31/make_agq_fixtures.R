## Reference values for the NB mixed model's adaptive Gauss–Hermite quadrature
## (tests/test_nbmm_agq.py): lme4's AGQ deviance function of a negative-binomial GLMM with the
## NB size θ fixed, at given parameters and at its (polished) maximum. See nbmm_agq/README.md.
## Run from the repository root: Rscript tests/data/lme4-1.1.31/make_agq_fixtures.R
suppressMessages({
  library(lme4)
  library(MASS)
})
stopifnot(packageVersion("lme4") == "1.1.31")
out <- file.path("tests", "data", "lme4-1.1.31", "nbmm_agq")
dir.create(out, showWarnings = FALSE)

set.seed(1)
ncell <- c(6, 9, 14, 20, 8, 11, 17, 5)  # unbalanced donors
J <- length(ncell)
donor <- rep(seq_len(J), ncell)
m <- length(donor)
d <- data.frame(donor = donor, x = round(rnorm(m), 3), s = round(exp(rnorm(m, 0, 0.3)), 3))
## three genes: low counts (many zeros), moderate, high; theta values with <= 4 decimals
## (MASS::negative.binomial names the family with round(theta, 4), which lme4's C++ family parses)
genes <- data.frame(
  gene = c("low", "mid", "high"), b0 = c(-0.7, 0.8, 3.0), b1 = c(0.3, -0.4, 0.25),
  sigma = c(1.2, 0.8, 0.6), theta = c(1.5, 3, 12)
)
for (g in seq_len(nrow(genes))) {
  gg <- genes[g, ]
  b <- rnorm(J, 0, gg$sigma)
  mu <- exp(gg$b0 + gg$b1 * d$x + b[donor]) * d$s
  d[[gg$gene]] <- rnbinom(m, size = gg$theta, mu = mu)
}
write.csv(d, file.path(out, "data.csv"), row.names = FALSE)

ctrl <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12,
                     optCtrl = list(rhobeg = 2e-2, rhoend = 1e-12, maxfun = 1e5))
dev_rows <- list()
opt_rows <- list()
for (g in seq_len(nrow(genes))) {
  gg <- genes[g, ]
  form <- as.formula(paste(gg$gene, "~ x + (1 | donor) + offset(log(s))"))
  dd <- transform(d, donor = factor(donor))
  fam <- negative.binomial(gg$theta)
  ## the saturated log-likelihood: lme4's AGQ deviance is −2 (AGQ log-likelihood − sat)
  sat <- sum(dnbinom(dd[[gg$gene]], size = gg$theta, mu = dd[[gg$gene]], log = TRUE))
  fit <- glmer(form, data = dd, family = fam, nAGQ = 25, control = ctrl)
  dfun <- glmer(form, data = dd, family = fam, nAGQ = 25, devFunOnly = TRUE, control = ctrl)
  ## polish glmer's maximum (pars = (σ, β)) with Newton steps on central-difference
  ## derivatives of the deviance function
  par <- c(getME(fit, "theta"), fixef(fit))
  h <- 1e-4
  grad_hess <- function(par) {
    n <- length(par)
    f0 <- dfun(par)
    gr <- numeric(n)
    H <- matrix(0, n, n)
    for (a in seq_len(n)) {
      ea <- replace(numeric(n), a, h)
      fp <- dfun(par + ea)
      fm <- dfun(par - ea)
      gr[a] <- (fp - fm) / (2 * h)
      H[a, a] <- (fp - 2 * f0 + fm) / h^2
      for (c in seq_len(a - 1)) {
        if (c < 1) break
        ec <- replace(numeric(n), c, h)
        H[a, c] <- H[c, a] <- (dfun(par + ea + ec) - dfun(par + ea - ec) -
          dfun(par - ea + ec) + dfun(par - ea - ec)) / (4 * h^2)
      }
    }
    list(gr = gr, H = H)
  }
  for (it in 1:6) {
    gh <- grad_hess(par)
    par <- par - solve(gh$H, gh$gr)
  }
  gh <- grad_hess(par)
  stopifnot(par[1] > 1e-2, max(abs(gh$gr)) < 1e-6)  # an interior, polished maximum
  opt_rows[[g]] <- data.frame(
    gene = gg$gene, theta = gg$theta, sigma = par[1], b0 = par[2], b1 = par[3],
    glmer_sigma = getME(fit, "theta"), glmer_b0 = fixef(fit)[1], glmer_b1 = fixef(fit)[2],
    max_abs_grad = max(abs(gh$gr)), deviance = dfun(par), sat = sat
  )
  ## the deviance function at the polished maximum and at a second point, for 2..25 nodes
  pts <- rbind(par, c(gg$sigma, gg$b0, gg$b1))
  for (k in c(2, 3, 5, 11, 25)) {
    dk <- glmer(form, data = dd, family = fam, nAGQ = k, devFunOnly = TRUE, control = ctrl)
    for (i in seq_len(nrow(pts))) {
      dev_rows[[length(dev_rows) + 1]] <- data.frame(
        gene = gg$gene, theta = gg$theta, point = i, nAGQ = k, sigma = pts[i, 1],
        b0 = pts[i, 2], b1 = pts[i, 3], deviance = dk(pts[i, ]), sat = sat
      )
    }
  }
}
fmt <- function(df) {
  num <- vapply(df, is.double, TRUE)
  df[num] <- lapply(df[num], function(v) sprintf("%.17g", v))
  df
}
write.csv(fmt(do.call(rbind, dev_rows)), file.path(out, "deviance.csv"), row.names = FALSE,
          quote = FALSE)
write.csv(fmt(do.call(rbind, opt_rows)), file.path(out, "optimum.csv"), row.names = FALSE,
          quote = FALSE)
writeLines(capture.output(sessionInfo()), file.path(out, "sessionInfo.txt"))
