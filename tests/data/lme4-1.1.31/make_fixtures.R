# Reference fits from lme4 (and lmerTest) for tests/test_lme4_reference.py.
#
# Run from the repository root:
#     Rscript tests/data/lme4-1.1.31/make_fixtures.R
#
# For each scenario it simulates a small data set (fixed seed), fits every gene with lme4::lmer
# by REML and by ML (through lmerTest::lmer, which returns the same fit plus Satterthwaite df),
# and writes, in tests/data/lme4-1.1.31/<scenario>/:
#   data.csv.gz  cell-level data: covariates, grouping columns, one column per gene (response)
#   fixef.csv    method, gene, term, estimate, se, df, t, p_value (lmerTest Satterthwaite)
#   theta.csv    method, gene, component, grp, vcov   (absolute variances, residual last,
#                components in the order of `random` below = the order of the blocks of Z)
#   fit.csv      method, gene, logLik, isSingular, REML criterion / deviance, optimizer info
#   ranef.csv    method, gene, grp, level, value     (conditional modes, BLUPs)
#   spec.csv     formula, response transform, random terms in Z order
# Numbers are written with 17 significant digits (exact round trip of doubles); the data are
# rounded before fitting so that the CSV holds exactly the values lme4 saw.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})

out_root <- file.path("tests", "data", "lme4-1.1.31")
if (!dir.exists(out_root)) stop("run from the repository root")

# Tight optimiser settings: bobyqa (minqa) on lme4's relative-SD parameters, trust region shrunk
# to 1e-12, so that lme4's optimum is accurate far beyond the 1e-6 the tests ask for.
ctrl <- lmerControl(
  optimizer = "bobyqa",
  optCtrl = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e5),
  check.conv.singular = .makeCC(action = "ignore", tol = 1e-4)
)

fmt <- function(df) {
  for (j in seq_along(df)) {
    if (is.double(df[[j]])) df[[j]] <- sprintf("%.17g", df[[j]])
  }
  df
}

write_csv <- function(df, path) {
  if (grepl("\\.gz$", path)) {
    con <- gzfile(path, "w")
    on.exit(close(con))
    write.csv(fmt(df), con, row.names = FALSE, quote = TRUE)
  } else {
    write.csv(fmt(df), path, row.names = FALSE, quote = TRUE)
  }
}

# random: character vector of grouping terms in the order of Z's blocks ("sam", "sam:cls").
fit_scenario <- function(name, data, genes, rhs_fixed, random, transform = "none") {
  dir <- file.path(out_root, name)
  dir.create(dir, showWarnings = FALSE)
  fixef_rows <- list()
  theta_rows <- list()
  fit_rows <- list()
  ranef_rows <- list()
  for (g in genes) {
    resp <- if (transform == "log2p1") sprintf("log2(1 + %s)", g) else g
    form <- as.formula(sprintf(
      "%s ~ %s + %s", resp, rhs_fixed, paste(sprintf("(1 | %s)", random), collapse = " + ")
    ))
    for (method in c("REML", "ML")) {
      msgs <- character(0)
      fit <- withCallingHandlers(
        lmerTest::lmer(form, data = data, REML = (method == "REML"), control = ctrl),
        warning = function(w) {
          msgs <<- c(msgs, conditionMessage(w))
          invokeRestart("muffleWarning")
        },
        message = function(m) {
          msgs <<- c(msgs, conditionMessage(m))
          invokeRestart("muffleMessage")
        }
      )
      co <- summary(fit, ddf = "Satterthwaite")$coefficients
      fixef_rows[[length(fixef_rows) + 1]] <- data.frame(
        method = method, gene = g, term = rownames(co),
        estimate = unname(fixef(fit)[rownames(co)]),
        se = unname(sqrt(diag(as.matrix(vcov(fit))))),
        df = unname(co[, "df"]), t = unname(co[, "t value"]), p_value = unname(co[, "Pr(>|t|)"])
      )
      vc <- as.data.frame(VarCorr(fit))
      # lme4 reorders random terms (by decreasing number of levels); put them back in Z order
      idx <- c(match(random, vc$grp), which(vc$grp == "Residual"))
      stopifnot(!anyNA(idx), length(idx) == nrow(vc))
      theta_rows[[length(theta_rows) + 1]] <- data.frame(
        method = method, gene = g,
        component = c(sprintf("var%d", seq_along(random)), "residual"),
        grp = vc$grp[idx], vcov = vc$vcov[idx]
      )
      opt <- fit@optinfo
      fit_rows[[length(fit_rows) + 1]] <- data.frame(
        method = method, gene = g, logLik = as.numeric(logLik(fit)),
        isSingular = isSingular(fit, tol = 1e-4),
        min_theta = min(getME(fit, "theta")),
        optimizer = opt$optimizer, feval = opt$feval,
        opt_conv = opt$conv$opt,
        messages = paste(c(msgs, unlist(opt$conv$lme4$messages)), collapse = " | ")
      )
      re <- ranef(fit)
      for (grp in random) {
        r <- re[[grp]]
        ranef_rows[[length(ranef_rows) + 1]] <- data.frame(
          method = method, gene = g, grp = grp, level = rownames(r), value = r[, 1]
        )
      }
    }
  }
  write_csv(do.call(rbind, fixef_rows), file.path(dir, "fixef.csv"))
  write_csv(do.call(rbind, theta_rows), file.path(dir, "theta.csv"))
  write_csv(do.call(rbind, fit_rows), file.path(dir, "fit.csv"))
  write_csv(do.call(rbind, ranef_rows), file.path(dir, "ranef.csv"))
  write_csv(data.frame(
    fixed = paste("~", rhs_fixed), random = paste(random, collapse = ";"),
    transform = transform, genes = paste(genes, collapse = ";"),
    control = "lmerControl(optimizer='bobyqa', optCtrl=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5))"
  ), file.path(dir, "spec.csv"))
  write_csv(data, file.path(dir, "data.csv.gz"))
  invisible(NULL)
}

# sizes of unbalanced groups, each at least `min`
unbalanced <- function(k, total, min = 5) {
  w <- rexp(k)
  s <- min + floor(w / sum(w) * (total - k * min))
  s[1] <- s[1] + total - sum(s)
  s
}

lvl <- function(prefix, k) sprintf("%s%02d", prefix, seq_len(k))

# --- k1: one random intercept, unbalanced subjects; gene g5 has no subject effect ---------------
set.seed(20260421)
nsam <- 20
sizes <- unbalanced(nsam, 600)
sam <- factor(rep(lvl("s", nsam), sizes), levels = lvl("s", nsam))
n <- length(sam)
d <- data.frame(
  sam = sam,
  x1 = round(rnorm(n), 4),
  x2 = factor(sample(c("a", "b", "c"), n, replace = TRUE, prob = c(0.5, 0.3, 0.2)))
)
sd_sam <- c(1.0, 0.5, 0.2, 0.05, 0)
for (j in seq_along(sd_sam)) {
  b <- rnorm(nsam, sd = sd_sam[j])
  y <- 1 + 0.5 * d$x1 + c(0, 0.3, -0.4)[as.integer(d$x2)] + b[as.integer(sam)] + rnorm(n)
  d[[sprintf("g%d", j)]] <- round(y, 6)
}
fit_scenario("k1", d, sprintf("g%d", seq_along(sd_sam)), "x1 + x2", "sam")

# --- k2_crossed: subjects crossed with batches --------------------------------------------------
set.seed(20260422)
nsam <- 15
nbat <- 6
n <- 900
sam <- factor(sample(lvl("s", nsam), n, replace = TRUE), levels = lvl("s", nsam))
batch <- factor(sample(lvl("b", nbat), n, replace = TRUE, prob = 1:nbat), levels = lvl("b", nbat))
d <- data.frame(sam = sam, batch = batch, x1 = round(rnorm(n), 4))
sds <- rbind(c(0.8, 0.5), c(0.3, 1.0), c(0.5, 0.1), c(1.2, 0.3), c(0.2, 0.0))
for (j in seq_len(nrow(sds))) {
  b1 <- rnorm(nsam, sd = sds[j, 1])
  b2 <- rnorm(nbat, sd = sds[j, 2])
  y <- 2 - 0.3 * d$x1 + b1[as.integer(sam)] + b2[as.integer(batch)] + rnorm(n, sd = 0.8)
  d[[sprintf("g%d", j)]] <- round(y, 6)
}
fit_scenario("k2_crossed", d, sprintf("g%d", seq_len(nrow(sds))), "x1", c("sam", "batch"))

# --- k2_nested: subject and subject:cluster ----------------------------------------------------
set.seed(20260423)
nsam <- 12
ncls <- 4
n <- 800
sam <- factor(sample(lvl("s", nsam), n, replace = TRUE), levels = lvl("s", nsam))
cls <- factor(sample(lvl("c", ncls), n, replace = TRUE, prob = c(4, 3, 2, 1)),
              levels = lvl("c", ncls))
d <- data.frame(sam = sam, cls = cls, x1 = round(rnorm(n), 4))
sc <- interaction(sam, cls, sep = ":")
sds <- rbind(c(0.7, 0.4), c(0.2, 0.6), c(1.0, 0.2), c(0.4, 0.4), c(0.0, 0.3))
for (j in seq_len(nrow(sds))) {
  b1 <- rnorm(nsam, sd = sds[j, 1])
  b2 <- rnorm(nlevels(sc), sd = sds[j, 2])
  y <- 0.5 * d$x1 + c(0, 1, -1, 0.5)[as.integer(cls)] + b1[as.integer(sam)] +
    b2[as.integer(sc)] + rnorm(n)
  d[[sprintf("g%d", j)]] <- round(y, 6)
}
fit_scenario("k2_nested", d, sprintf("g%d", seq_len(nrow(sds))), "x1 + cls", c("sam", "sam:cls"))

# --- between: treatment between subjects, NB counts, log2(1 + counts), log(libsize) ------------
set.seed(20260424)
nsam <- 12
sizes <- unbalanced(nsam, 1200, min = 40)
sam <- factor(rep(lvl("s", nsam), sizes), levels = lvl("s", nsam))
n <- length(sam)
trt <- factor(ifelse(as.integer(sam) <= nsam / 2, "ctrl", "stim"), levels = c("ctrl", "stim"))
libsize <- round(exp(rnorm(n, log(2000), 0.4)))
d <- data.frame(sam = sam, trt = trt, libsize = libsize)
base <- c(0.5, 2, 5, 1, 0.2, 10) / 1000 # expected fraction of the library, per 1000
lfc <- c(0, 0.5, -0.3, 0, 0.8, 0)
sd_sam <- c(0.3, 0.2, 0.4, 0.1, 0.3, 0)
for (j in seq_along(base)) {
  b <- rnorm(nsam, sd = sd_sam[j])
  mu <- libsize * base[j] * exp(lfc[j] * (trt == "stim") + b[as.integer(sam)])
  d[[sprintf("g%d", j)]] <- rnbinom(n, mu = mu, size = 5)
}
fit_scenario("between", d, sprintf("g%d", seq_along(base)), "trt + log(libsize)", "sam",
             transform = "log2p1")

cat("done\n")
