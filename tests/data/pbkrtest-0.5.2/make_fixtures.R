# Kenward-Roger reference tests (pbkrtest through lmerTest) for tests/test_kenward_roger.py.
#
# Run from the repository root:
#     Rscript tests/data/pbkrtest-0.5.2/make_fixtures.R
#
# For each scenario it simulates a small data set (fixed seed), fits every gene by REML with
# lmerTest::lmer (tight bobyqa control, as tests/data/lme4-1.1.31/make_fixtures.R) and writes,
# in tests/data/pbkrtest-0.5.2/<scenario>/:
#   data.csv.gz            cell-level data: covariates, grouping columns, one column per gene
#   spec.csv               fixed formula (right-hand side), random terms in Z order, genes
#   fit.csv                gene, logLik (REML criterion), isSingular, min_theta, opt_conv, messages
#   theta.csv              gene, component, grp, vcov (absolute variances in Z order, residual last)
#   contrast_matrices.csv  contrast, row, one column per coefficient (model.matrix order)
#   contrasts.csv          gene, contrast, type ("t" or "F"), and
#                            t: estimate, se (from the KR-adjusted covariance), se_unadj
#                               (from vcov), df, t, p_value  -- lmerTest::contest1D(ddf = "Kenward-Roger")
#                            F: F (KR-scaled), ndf, ddf, p_value, F_scaling, F_unscaled
#                               -- lmerTest::contestMD(ddf = "Kenward-Roger"), i.e. pbkrtest::KRmodcomp
#   contrasts_satterthwaite.csv  (singular scenarios) the same contrasts with lmerTest's
#                          Satterthwaite df: t: estimate, se, df, t, p_value; F: F, ndf, ddf, p_value
# Numbers are written with 17 significant digits (exact round trip of doubles); the data are
# rounded before fitting so that the CSV holds exactly the values R saw.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
})

out_root <- file.path("tests", "data", "pbkrtest-0.5.2")
if (!dir.exists(out_root)) stop("run from the repository root")
stopifnot(as.character(packageVersion("pbkrtest")) == "0.5.2")

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

# An lme4 optimizer (lmerControl(optimizer = )): minqa::bobyqa over the relative SDs θ with
# those marked in `zero` held at 0 -- lme4's REML fit on the boundary face θₖ = 0.
bobyqa_at_zero <- function(zero) {
  function(fn, par, lower, upper, control) {
    full <- function(p) fn(replace(numeric(length(zero)), !zero, p))
    res <- minqa::bobyqa(par[!zero], full, lower = lower[!zero], upper = upper[!zero],
                         control = control)
    list(par = replace(numeric(length(zero)), !zero, res$par), fval = res$fval,
         feval = res$feval, convergence = res$ierr, message = res$msg)
  }
}

# Any warning or message of lme4, lmerTest or pbkrtest (e.g. lmerTest's fall-back to
# Satterthwaite when KR fails) is recorded; a KR fall-back stops the script.
quietly <- function(expr, msgs) {
  withCallingHandlers(
    expr,
    warning = function(w) {
      msgs$text <- c(msgs$text, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs$text <- c(msgs$text, conditionMessage(m))
      invokeRestart("muffleMessage")
    }
  )
}

# contrasts: named list of matrices with one column per coefficient of model.matrix; one row:
# a t test (contest1D), several rows: a joint F test (contestMD). satterthwaite = TRUE also
# writes lmerTest's Satterthwaite tests of the same contrasts (contrasts_satterthwaite.csv).
#
# singular = TRUE: a gene whose fit stops with a relative SD θₖ in (0, 1e-6) (bobyqa's iterates
# approach the bound 0 without always landing on it) is refitted with those θₖ held at 0 and
# bobyqa over the others (bobyqa_at_zero); fit.csv's messages say so.
fit_scenario <- function(name, data, genes, rhs_fixed, random, contrasts, satterthwaite = FALSE,
                         singular = FALSE) {
  dir <- file.path(out_root, name)
  dir.create(dir, showWarnings = FALSE)
  fit_rows <- list()
  theta_rows <- list()
  con_rows <- list()
  sat_rows <- list()
  for (g in genes) {
    form <- as.formula(sprintf(
      "%s ~ %s + %s", g, rhs_fixed, paste(sprintf("(1 | %s)", random), collapse = " + ")
    ))
    msgs <- new.env()
    msgs$text <- character(0)
    fit <- quietly(lmerTest::lmer(form, data = data, REML = TRUE, control = ctrl), msgs)
    if (singular) {
      th <- getME(fit, "theta")
      tiny <- th > 0 & th < 1e-6
      if (any(tiny)) {
        ctrl0 <- ctrl
        ctrl0$optimizer <- bobyqa_at_zero(tiny)
        fit <- quietly(lmerTest::lmer(form, data = data, REML = TRUE, control = ctrl0), msgs)
        msgs$text <- c(msgs$text, sprintf("refitted with theta%s = 0 (first fit: theta = %s)",
                                          paste(which(tiny), collapse = ","),
                                          paste(sprintf("%.3g", th), collapse = ", ")))
      }
      stopifnot(min(getME(fit, "theta")) == 0)
    }
    vc <- as.data.frame(VarCorr(fit))
    idx <- c(match(random, vc$grp), which(vc$grp == "Residual"))
    stopifnot(!anyNA(idx), length(idx) == nrow(vc))
    theta_rows[[length(theta_rows) + 1]] <- data.frame(
      gene = g, component = c(sprintf("var%d", seq_along(random)), "residual"),
      grp = vc$grp[idx], vcov = vc$vcov[idx]
    )
    beta <- fixef(fit)
    Phi <- as.matrix(vcov(fit))
    for (cname in names(contrasts)) {
      L <- contrasts[[cname]]
      stopifnot(ncol(L) == length(beta))
      n_before <- length(msgs$text)
      if (nrow(L) == 1) {
        res <- quietly(contest1D(fit, drop(L), ddf = "Kenward-Roger"), msgs)
        con_rows[[length(con_rows) + 1]] <- data.frame(
          gene = g, contrast = cname, type = "t",
          estimate = res$Estimate, se = res$`Std. Error`,
          se_unadj = sqrt(drop(L %*% Phi %*% t(L))), df = res$df, t = res$`t value`,
          p_value = res$`Pr(>|t|)`,
          F = NA_real_, ndf = NA_real_, ddf = NA_real_, F_scaling = NA_real_, F_unscaled = NA_real_
        )
      } else {
        res <- quietly(contestMD(fit, L, ddf = "Kenward-Roger"), msgs)
        kr <- quietly(pbkrtest::KRmodcomp(fit, L)$test, msgs)
        stopifnot(isTRUE(all.equal(kr["Ftest", "stat"], res$`F value`, tolerance = 1e-12)))
        con_rows[[length(con_rows) + 1]] <- data.frame(
          gene = g, contrast = cname, type = "F",
          estimate = NA_real_, se = NA_real_, se_unadj = NA_real_, df = NA_real_, t = NA_real_,
          p_value = res$`Pr(>F)`,
          F = res$`F value`, ndf = res$NumDF, ddf = res$DenDF,
          F_scaling = kr["Ftest", "F.scaling"], F_unscaled = kr["FtestU", "stat"]
        )
      }
      if (satterthwaite) {
        sat_rows[[length(sat_rows) + 1]] <- satterthwaite_row(fit, g, cname, L, msgs)
      }
      if (length(msgs$text) > n_before) {
        stop(sprintf("%s %s %s: %s", name, g, cname, paste(msgs$text, collapse = " | ")))
      }
    }
    if (satterthwaite) {
      # summary()'s coefficient table is contest1D of the identity rows
      cf <- summary(fit, ddf = "Satterthwaite")$coefficients
      mine <- do.call(rbind, sat_rows)
      mine <- mine[mine$gene == g & mine$contrast %in% rownames(cf), ]
      stopifnot(isTRUE(all.equal(mine$df, unname(cf[mine$contrast, "df"]), tolerance = 1e-12)))
    }
    opt <- fit@optinfo
    fit_rows[[length(fit_rows) + 1]] <- data.frame(
      gene = g, logLik = as.numeric(logLik(fit)),
      isSingular = isSingular(fit, tol = 1e-4),
      min_theta = min(getME(fit, "theta")),
      opt_conv = opt$conv$opt,
      messages = paste(c(msgs$text, unlist(opt$conv$lme4$messages)), collapse = " | ")
    )
  }
  write_csv(do.call(rbind, fit_rows), file.path(dir, "fit.csv"))
  write_csv(do.call(rbind, theta_rows), file.path(dir, "theta.csv"))
  write_csv(do.call(rbind, con_rows), file.path(dir, "contrasts.csv"))
  if (satterthwaite) {
    write_csv(do.call(rbind, sat_rows), file.path(dir, "contrasts_satterthwaite.csv"))
  }
  L_rows <- lapply(names(contrasts), function(cname) {
    L <- contrasts[[cname]]
    data.frame(contrast = cname, row = seq_len(nrow(L)), L, check.names = FALSE)
  })
  write_csv(do.call(rbind, L_rows), file.path(dir, "contrast_matrices.csv"))
  write_csv(data.frame(
    fixed = paste("~", rhs_fixed), random = paste(random, collapse = ";"),
    transform = "none", genes = paste(genes, collapse = ";"),
    control = "lmerControl(optimizer='bobyqa', optCtrl=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5))"
  ), file.path(dir, "spec.csv"))
  write_csv(data, file.path(dir, "data.csv.gz"))
  invisible(NULL)
}

# lmerTest's Satterthwaite test of one contrast: contest1D (t) or contestMD (F).
satterthwaite_row <- function(fit, g, cname, L, msgs) {
  if (nrow(L) == 1) {
    res <- quietly(contest1D(fit, drop(L), ddf = "Satterthwaite"), msgs)
    data.frame(
      gene = g, contrast = cname, type = "t",
      estimate = res$Estimate, se = res$`Std. Error`, df = res$df, t = res$`t value`,
      p_value = res$`Pr(>|t|)`, F = NA_real_, ndf = NA_real_, ddf = NA_real_
    )
  } else {
    res <- quietly(contestMD(fit, L, ddf = "Satterthwaite"), msgs)
    data.frame(
      gene = g, contrast = cname, type = "F",
      estimate = NA_real_, se = NA_real_, df = NA_real_, t = NA_real_,
      p_value = res$`Pr(>F)`, F = res$`F value`, ndf = res$NumDF, ddf = res$DenDF
    )
  }
}

lvl <- function(prefix, k) sprintf("%s%02d", prefix, seq_len(k))

# identity contrasts (one per coefficient) with model.matrix's column names
coef_contrasts <- function(names) {
  out <- lapply(seq_along(names), function(j) {
    L <- matrix(0, 1, length(names), dimnames = list(NULL, names))
    L[1, j] <- 1
    L
  })
  setNames(out, names)
}

contrast_row <- function(names, values) {
  L <- matrix(0, 1, length(names), dimnames = list(NULL, names))
  L[1, names(values)] <- values
  L
}

joint_rows <- function(names, terms) {
  L <- matrix(0, length(terms), length(names), dimnames = list(NULL, names))
  for (i in seq_along(terms)) L[i, terms[i]] <- 1
  L
}

# One random intercept per subject; a between-subject treatment (half the subjects stimulated)
# and a within-subject covariate x1; a subject SD well away from 0 so that no fit is singular.
simulate_k1 <- function(sizes, sd_sam, seed) {
  set.seed(seed)
  nsam <- length(sizes)
  sam <- factor(rep(lvl("s", nsam), sizes), levels = lvl("s", nsam))
  n <- length(sam)
  trt <- factor(ifelse(as.integer(sam) <= nsam / 2, "ctrl", "stim"), levels = c("ctrl", "stim"))
  d <- data.frame(sam = sam, trt = trt, x1 = round(rnorm(n), 4))
  beta_trt <- c(0, 0.8, -0.5, 0.3, 1.2)
  beta_x1 <- c(0.5, 0, 0.2, -0.4, 0.1)
  for (j in seq_along(sd_sam)) {
    b <- rnorm(nsam, sd = sd_sam[j])
    y <- 1 + beta_trt[j] * (trt == "stim") + beta_x1[j] * d$x1 + b[as.integer(sam)] + rnorm(n)
    d[[sprintf("g%d", j)]] <- round(y, 6)
  }
  d
}

k1_names <- c("(Intercept)", "trtstim", "x1")
k1_contrasts <- c(
  coef_contrasts(k1_names),
  list(
    combo = contrast_row(k1_names, c("(Intercept)" = 1, trtstim = 1, x1 = 0.5)),
    joint = joint_rows(k1_names, c("trtstim", "x1"))
  )
)
genes5 <- sprintf("g%d", 1:5)

# --- k1_4_balanced: 4 subjects (2 per arm), 40 cells each -------------------------------------
d <- simulate_k1(rep(40, 4), c(1.0, 0.8, 1.5, 0.7, 1.2), 20260501)
fit_scenario("k1_4_balanced", d, genes5, "trt + x1", "sam", k1_contrasts)

# --- k1_10_unbalanced: 10 subjects, 8 to 60 cells ----------------------------------------------
set.seed(20260502)
sizes <- sample(8:60, 10, replace = TRUE)
d <- simulate_k1(sizes, c(0.6, 0.9, 0.4, 1.0, 0.5), 20260503)
fit_scenario("k1_10_unbalanced", d, genes5, "trt + x1", "sam", k1_contrasts)

# --- k1_40_balanced: 40 subjects, 8 cells each -------------------------------------------------
d <- simulate_k1(rep(8, 40), c(0.5, 0.7, 0.3, 1.0, 0.4), 20260504)
fit_scenario("k1_40_balanced", d, genes5, "trt + x1", "sam", k1_contrasts)

# --- k2_nested: (1 | donor) + (1 | donor:ct), 8 donors (4 per arm), 3 cell types, unbalanced ---
set.seed(20260505)
ndon <- 8
n <- 480
donor <- factor(sample(lvl("d", ndon), n, replace = TRUE), levels = lvl("d", ndon))
ct <- factor(sample(c("A", "B", "C"), n, replace = TRUE, prob = c(0.5, 0.3, 0.2)))
trt <- factor(ifelse(as.integer(donor) <= ndon / 2, "ctrl", "stim"), levels = c("ctrl", "stim"))
d <- data.frame(donor = donor, ct = ct, trt = trt, x1 = round(rnorm(n), 4))
dc <- interaction(donor, ct, sep = ":")
sds <- rbind(c(0.8, 0.5), c(0.5, 0.7), c(1.0, 0.4), c(0.6, 0.6), c(0.9, 0.8))
for (j in seq_len(nrow(sds))) {
  b1 <- rnorm(ndon, sd = sds[j, 1])
  b2 <- rnorm(nlevels(dc), sd = sds[j, 2])
  y <- 0.5 + c(0, 0.6, -0.4, 0.2, 1.0)[j] * (trt == "stim") + 0.3 * d$x1 +
    c(0, 1, -1)[as.integer(ct)] + b1[as.integer(donor)] + b2[as.integer(dc)] + rnorm(n)
  d[[sprintf("g%d", j)]] <- round(y, 6)
}
nested_names <- c("(Intercept)", "trtstim", "x1", "ctB", "ctC")
nested_contrasts <- c(
  coef_contrasts(nested_names),
  list(
    ctB_minus_ctC = contrast_row(nested_names, c(ctB = 1, ctC = -1)),
    combo = contrast_row(nested_names, c("(Intercept)" = 1, trtstim = 1, ctB = 0.5)),
    joint_ct = joint_rows(nested_names, c("ctB", "ctC")),
    joint_trt_x1 = joint_rows(nested_names, c("trtstim", "x1"))
  )
)
fit_scenario("k2_nested", d, genes5, "trt + x1 + ct", c("donor", "donor:ct"), nested_contrasts)

# --- k2_crossed: (1 | sam) + (1 | batch), 12 subjects crossed with 5 batches ------------------
set.seed(20260506)
nsam <- 12
nbat <- 5
n <- 420
sam <- factor(sample(lvl("s", nsam), n, replace = TRUE), levels = lvl("s", nsam))
batch <- factor(sample(lvl("b", nbat), n, replace = TRUE), levels = lvl("b", nbat))
trt <- factor(ifelse(as.integer(sam) <= nsam / 2, "ctrl", "stim"), levels = c("ctrl", "stim"))
d <- data.frame(sam = sam, batch = batch, trt = trt, x1 = round(rnorm(n), 4))
sds <- rbind(c(0.8, 0.6), c(0.5, 1.0), c(1.0, 0.5), c(0.7, 0.8), c(0.6, 0.7))
for (j in seq_len(nrow(sds))) {
  b1 <- rnorm(nsam, sd = sds[j, 1])
  b2 <- rnorm(nbat, sd = sds[j, 2])
  y <- 2 + c(0, 0.5, -0.8, 0.3, 0.6)[j] * (trt == "stim") - 0.3 * d$x1 +
    b1[as.integer(sam)] + b2[as.integer(batch)] + rnorm(n, sd = 0.8)
  d[[sprintf("g%d", j)]] <- round(y, 6)
}
fit_scenario("k2_crossed", d, genes5, "trt + x1", c("sam", "batch"), k1_contrasts)

# --- singular fits: every gene has one variance component whose lme4 fit is exactly 0 (min θ
# == 0). bobyqa's iterates approach the bound θₖ = 0 (where the REML criterion, a function of
# θₖ², is flat in θₖ) and may stop at θₖ ~ 1e-9 instead of on it; such genes are refitted with
# θₖ held at 0 (fit_scenario(singular = TRUE)).

# --- k1_6_singular: 6 subjects (3 per arm), 10 to 40 cells, no subject effect -----------------
set.seed(20260507)
sizes <- sample(10:40, 6, replace = TRUE)
d <- simulate_k1(sizes, rep(0, 5), 20260527)
fit_scenario("k1_6_singular", d, genes5, "trt + x1", "sam", k1_contrasts, satterthwaite = TRUE,
             singular = TRUE)

# --- k2_crossed_singular: (1 | sam) + (1 | batch), 8 subjects crossed with 4 batches; genes 1, 2
# and 5 without a subject effect (noise underdispersed across subjects), genes 3 and 4 without a
# batch effect (noise underdispersed across batches) ---------------------------------------------
set.seed(20260509)
nsam <- 8
nbat <- 4
n <- 240
sam <- factor(sample(lvl("s", nsam), n, replace = TRUE), levels = lvl("s", nsam))
batch <- factor(sample(lvl("b", nbat), n, replace = TRUE), levels = lvl("b", nbat))
trt <- factor(ifelse(as.integer(sam) <= nsam / 2, "ctrl", "stim"), levels = c("ctrl", "stim"))
d <- data.frame(sam = sam, batch = batch, trt = trt, x1 = round(rnorm(n), 4))
sds <- rbind(c(0, 0.6), c(0, 0.8), c(0.7, 0), c(0.6, 0), c(0, 0.5))
for (j in seq_len(nrow(sds))) {
  b1 <- rnorm(nsam, sd = sds[j, 1])
  b2 <- rnorm(nbat, sd = sds[j, 2])
  e <- rnorm(n, sd = 0.8)
  e <- e - if (sds[j, 1] == 0) ave(e, sam) else ave(e, batch)
  y <- 2 + c(0, 0.5, -0.8, 0.3, 0.6)[j] * (trt == "stim") - 0.3 * d$x1 +
    b1[as.integer(sam)] + b2[as.integer(batch)] + e
  d[[sprintf("g%d", j)]] <- round(y, 6)
}
fit_scenario("k2_crossed_singular", d, genes5, "trt + x1", c("sam", "batch"), k1_contrasts,
             satterthwaite = TRUE, singular = TRUE)

cat("done\n")
