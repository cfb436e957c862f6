# Cell-level mixed-model comparators (glmmTMB NB GLMM, lmerTest LMM on log2(1 + count)) on a
# subset of genes, for validation/r_de.py (run_r_cell_models). One model per gene, each in its
# own tryCatch: a gene whose fit fails gets NA with status "failed: <message>"; warnings are
# kept in the status ("warning: <message>") with the fit's values (glmmTMB's are NA when its
# Hessian is not positive definite). One R process runs every requested method on every DIR
# given, loading the packages once; a DIR that fails as a whole gets DIR/error.txt with R's
# message and the next DIR runs.
# Usage: Rscript cell_mixed_models.R DIR [DIR ...]   each DIR holds
#   counts.bin   the cells x genes counts, a C-order float64 little-endian dump
#   meta.txt     "N G" (cells, genes) on one line
#   obs.csv      the cell table (header): donor, group (0/1), libsize, size_factor and the
#                covariates (the columns of factors.txt are factors, the others numeric)
#   factors.txt  the names of the factor columns, one a line (read as character, then factors)
#   levels.csv   column,level: the level order of some factor columns (first = reference;
#                the others take R's sorted order)
#   spec.txt     line 1: the covariates, "+" separated, or empty; line 2: the methods, comma
#                separated, among glmmtmb, lmertest
# Models (group is numeric 0/1, its coefficient the tested one):
#   glmmtmb   count ~ group [+ covariates] + offset(log(size_factor)) + (1|donor),
#             family nbinom2 (Var = mu + mu^2/theta), ML (Laplace); Wald z p-value of group
#             (summary); log_fc = estimate / log(2) (log2 fold change of the NB mean)
#   lmertest  y ~ log(libsize) + group [+ covariates] + (1|donor) with y = log2(1 + count),
#             REML; t test of group on Satterthwaite df (lmerTest's summary); log_fc = the
#             estimate (a difference of mean log2(1 + count))
# Writes DIR/<method>.csv (p_value, log_fc, se, df, status; one row per gene in input order)
# and DIR/seconds.csv (method, seconds: the elapsed time of the whole per-gene loop).
# Exits with status 3 ("R cannot load <packages>" on stderr) when a method's package is missing.
dirs <- commandArgs(trailingOnly = TRUE)
methods_of <- function(dir) strsplit(readLines(file.path(dir, "spec.txt"))[2], ",")[[1]]
need <- list(glmmtmb = "glmmTMB", lmertest = "lmerTest")
loads <- function(p) tryCatch({
  suppressPackageStartupMessages(library(p, character.only = TRUE)); TRUE
}, error = function(e) FALSE)
pkgs <- unique(unlist(need[unique(unlist(lapply(dirs, methods_of)))]))
ok <- vapply(pkgs, loads, logical(1))
if (!all(ok)) {  # exit status 3: validation/r_de.py reports the note
  message("R cannot load ", paste(pkgs[!ok], collapse = ", "))
  quit(status = 3)
}
clean <- function(msg) gsub("[\r\n,]+", " ", msg)

run_dir <- function(dir) {
  meta <- scan(file.path(dir, "meta.txt"), quiet = TRUE)
  N <- meta[1]; G <- meta[2]
  Y <- matrix(readBin(file.path(dir, "counts.bin"), "double", n = N * G, endian = "little"),
              nrow = G, ncol = N)  # a C-order N x G dump is read as its G x N transpose
  spec <- readLines(file.path(dir, "spec.txt"))
  covs <- if (length(spec) >= 1 && nzchar(trimws(spec[1]))) trimws(spec[1]) else ""
  methods <- strsplit(spec[2], ",")[[1]]
  fac <- readLines(file.path(dir, "factors.txt"))
  cd <- read.csv(file.path(dir, "obs.csv"), check.names = FALSE,
                 colClasses = setNames(rep("character", length(fac)), fac))
  lv <- read.csv(file.path(dir, "levels.csv"), stringsAsFactors = FALSE)
  for (v in fac) {
    cd[[v]] <- if (v %in% lv$column) factor(cd[[v]], levels = lv$level[lv$column == v])
               else factor(cd[[v]])
  }
  cd$donor <- factor(cd$donor)
  plus_covs <- if (nzchar(covs)) paste("+", covs) else ""
  f_tmb <- as.formula(paste("count ~ group", plus_covs, "+ offset(log(size_factor)) + (1 | donor)"))
  f_lmer <- as.formula(paste("y ~ log(libsize) + group", plus_covs, "+ (1 | donor)"))

  one_gene <- function(m, g) {
    warn <- character(0)
    r <- withCallingHandlers(
      tryCatch({
        if (m == "glmmtmb") {
          cd$count <- Y[g, ]
          fit <- glmmTMB(f_tmb, data = cd, family = nbinom2)
          cf <- coef(summary(fit))$cond
          c(cf["group", "Estimate"] / log(2), cf["group", "Std. Error"] / log(2),
            Inf, cf["group", "Pr(>|z|)"])
        } else {
          cd$y <- log2(1 + Y[g, ])
          fit <- lmer(f_lmer, data = cd, REML = TRUE)
          cf <- coef(summary(fit))  # lmerTest: Satterthwaite df
          c(cf["group", "Estimate"], cf["group", "Std. Error"], cf["group", "df"],
            cf["group", "Pr(>|t|)"])
        }
      }, error = function(e) structure(rep(NA_real_, 4), msg = clean(conditionMessage(e)))),
      warning = function(w) { warn <<- c(warn, clean(conditionMessage(w)))
                              invokeRestart("muffleWarning") },
      message = function(msg) { warn <<- c(warn, clean(conditionMessage(msg)))
                                invokeRestart("muffleMessage") })
    status <- if (!is.null(attr(r, "msg"))) paste("failed:", attr(r, "msg"))
              else if (length(warn)) paste("warning:", paste(unique(trimws(warn)), collapse = "; "))
              else "ok"
    list(values = as.numeric(r), status = status)
  }

  seconds <- data.frame(method = character(0), seconds = numeric(0))
  for (m in methods) {
    vals <- matrix(NA_real_, G, 4); status <- character(G)
    elapsed <- system.time(
      for (g in seq_len(G)) { r <- one_gene(m, g); vals[g, ] <- r$values; status[g] <- r$status }
    )[["elapsed"]]
    out <- data.frame(p_value = vals[, 4], log_fc = vals[, 1], se = vals[, 2], df = vals[, 3],
                      status = status, stringsAsFactors = FALSE)
    write.csv(out, file.path(dir, paste0(m, ".csv")), row.names = FALSE)
    seconds <- rbind(seconds, data.frame(method = m, seconds = elapsed))
  }
  write.csv(seconds, file.path(dir, "seconds.csv"), row.names = FALSE)
}

for (dir in dirs) {
  tryCatch(run_dir(dir), error = function(e)
    writeLines(gsub("[\r\n]+", " ", conditionMessage(e)), file.path(dir, "error.txt")))
}
