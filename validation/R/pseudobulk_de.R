# The standard pseudobulk DE comparators (edgeR QL, limma-voom, DESeq2) on one pseudobulk
# count matrix, for validation/r_de.py (run_r_pseudobulk, run_r_pseudobulk_jobs). One R process
# runs every requested method on every DIR given, loading the packages once; a method that fails
# writes NA p-values with its status ("failed: <message>") and the others still run; a DIR that
# fails as a whole (a bad design) gets DIR/error.txt with R's message and the next DIR runs.
# Usage: Rscript pseudobulk_de.R DIR [DIR ...]   each DIR holds
#   counts.bin   the samples x genes counts, a C-order float64 little-endian dump
#   meta.txt     "S G" (samples, genes) on one line
#   samples.csv  the sample table (header; the columns of factors.txt are factors, the others
#                numeric)
#   factors.txt  the names of the factor columns, one a line (read as character, then factors)
#   levels.csv   column,level: the level order of some factor columns (first = reference;
#                the others take R's sorted order)
#   spec.txt     line 1: the design formula ("~ group"); line 2: the coefficient to test (a
#                column name of model.matrix(design, samples)); line 3: the methods, comma
#                separated, among edger_ql, limma_voom, deseq2_r
# Writes DIR/<method>.csv (p_value, log_fc, se, status; one row per gene in input order;
# log_fc in log2; se NA where the method reports none) and DIR/seconds.csv (method, seconds:
# the elapsed time of the method's whole pipeline, normalisation to test, reading excluded).
# Genes whose counts are all zero are left out of every fit (p_value NA, status all_zero).
# Exits with status 3 ("R cannot load <packages>" on stderr) when a method's package is missing.
dirs <- commandArgs(trailingOnly = TRUE)
methods_of <- function(dir) strsplit(readLines(file.path(dir, "spec.txt"))[3], ",")[[1]]
need <- list(edger_ql = "edgeR", limma_voom = c("edgeR", "limma"), deseq2_r = "DESeq2")
loads <- function(p) tryCatch({
  suppressPackageStartupMessages(library(p, character.only = TRUE)); TRUE
}, error = function(e) FALSE)
pkgs <- unique(unlist(need[unique(unlist(lapply(dirs, methods_of)))]))
ok <- vapply(pkgs, loads, logical(1))
if (!all(ok)) {  # exit status 3: validation/r_de.py reports the note
  message("R cannot load ", paste(pkgs[!ok], collapse = ", "))
  quit(status = 3)
}

run_dir <- function(dir) {
  meta <- scan(file.path(dir, "meta.txt"), quiet = TRUE)
  S <- meta[1]; G <- meta[2]
  cts <- matrix(readBin(file.path(dir, "counts.bin"), "double", n = S * G, endian = "little"),
                nrow = G, ncol = S)  # a C-order S x G dump is read as its G x S transpose
  spec <- readLines(file.path(dir, "spec.txt"))
  design_formula <- as.formula(spec[1]); coef <- spec[2]
  methods <- strsplit(spec[3], ",")[[1]]
  fac <- readLines(file.path(dir, "factors.txt"))
  cd <- read.csv(file.path(dir, "samples.csv"), check.names = FALSE,
                 colClasses = setNames(rep("character", length(fac)), fac))
  lv <- read.csv(file.path(dir, "levels.csv"), stringsAsFactors = FALSE)
  for (v in fac) {
    cd[[v]] <- if (v %in% lv$column) factor(cd[[v]], levels = lv$level[lv$column == v])
               else factor(cd[[v]])
  }
  rownames(cd) <- make.unique(as.character(if ("sample" %in% names(cd)) cd$sample else seq_len(S)))
  storage.mode(cts) <- "double"
  colnames(cts) <- rownames(cd); rownames(cts) <- paste0("g", seq_len(G))
  mm <- model.matrix(design_formula, cd)
  if (!(coef %in% colnames(mm)))
    stop("coefficient ", coef, " is not a column of the design: ",
         paste(colnames(mm), collapse = ", "))
  if (qr(mm)$rank < ncol(mm))
    stop("the design matrix is not of full rank: ", paste(colnames(mm), collapse = ", "))
  keep <- rowSums(cts) > 0
  y <- cts[keep, , drop = FALSE]

  # each returns list(p, lfc, se, status) over the kept genes
  fit_edger_ql <- function() {
    dge <- calcNormFactors(DGEList(y), method = "TMM")
    dge <- estimateDisp(dge, mm)
    fit <- glmQLFit(dge, mm, robust = TRUE)
    tt <- glmQLFTest(fit, coef = coef)$table
    list(p = tt$PValue, lfc = tt$logFC, se = rep(NA_real_, nrow(tt)), status = "ok")
  }
  fit_limma_voom <- function() {
    dge <- calcNormFactors(DGEList(y), method = "TMM")
    v <- voom(dge, mm)
    fit <- eBayes(lmFit(v, mm))
    tt <- topTable(fit, coef = coef, number = Inf, sort.by = "none")
    se <- sqrt(fit$s2.post) * fit$stdev.unscaled[, coef]
    list(p = tt$P.Value, lfc = tt$logFC, se = unname(se), status = "ok")
  }
  fit_deseq2_r <- function() {
    yi <- round(y); storage.mode(yi) <- "integer"
    # the design as its model matrix, so that the coefficient is named as in model.matrix
    mmd <- mm; colnames(mmd) <- make.names(colnames(mmd))
    dds <- DESeqDataSetFromMatrix(yi, cd, design = mmd)
    dds <- DESeq(dds, quiet = TRUE)
    res <- results(dds, name = make.names(coef))
    st <- ifelse(is.na(res$pvalue), "cooks_outlier", "ok")  # DESeq2's defaults: Cook's cutoff
    list(p = res$pvalue, lfc = res$log2FoldChange, se = res$lfcSE, status = st)
  }

  seconds <- data.frame(method = character(0), seconds = numeric(0), status = character(0))
  for (m in methods) {
    out <- data.frame(p_value = rep(NA_real_, G), log_fc = NA_real_, se = NA_real_,
                      status = "all_zero", stringsAsFactors = FALSE)
    elapsed <- NA_real_
    res <- tryCatch({
      t0 <- proc.time()[["elapsed"]]
      r <- suppressWarnings(switch(m, edger_ql = fit_edger_ql(), limma_voom = fit_limma_voom(),
                                   deseq2_r = fit_deseq2_r(), stop("unknown method ", m)))
      elapsed <- proc.time()[["elapsed"]] - t0
      r
    }, error = function(e) {
      msg <- gsub("[\r\n]+", " ", conditionMessage(e))
      list(p = NA_real_, lfc = NA_real_, se = NA_real_, status = paste("failed:", msg))
    })
    out$p_value[keep] <- res$p; out$log_fc[keep] <- res$lfc; out$se[keep] <- res$se
    out$status[keep] <- ifelse(is.na(res$p) & res$status == "ok", "no_p_value", res$status)
    write.csv(out, file.path(dir, paste0(m, ".csv")), row.names = FALSE)
    st <- if (startsWith(res$status[1], "failed")) res$status[1] else "ok"
    seconds <- rbind(seconds, data.frame(method = m, seconds = elapsed, status = st))
  }
  write.csv(seconds, file.path(dir, "seconds.csv"), row.names = FALSE)
}

for (dir in dirs) {
  tryCatch(run_dir(dir), error = function(e)
    writeLines(gsub("[\r\n]+", " ", conditionMessage(e)), file.path(dir, "error.txt")))
}
