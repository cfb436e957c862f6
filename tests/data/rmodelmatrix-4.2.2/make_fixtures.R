# Reference design matrices from R's model.matrix for tests/test_design.py.
#
# Run from the repository root:
#     Rscript tests/data/rmodelmatrix-4.2.2/make_fixtures.R
#
# Writes, in tests/data/rmodelmatrix-4.2.2/:
#   obs.csv          a small cell table (fixed seed): character columns sam, cls, trt, case;
#                    a factor grp with a non-alphabetical level order; numeric libsize, x, time
#   levels.csv       column, level: the level order of every factor column R used
#   formulas.csv     id, formula
#   mm_<id>.csv      model.matrix(formula, obs): header = R's column names, in R's order;
#                    values with 17 significant digits
#   sessionInfo.txt
#
# Character columns are turned into factors by model.matrix with levels sort(unique(x)), which
# depends on the collation locale. The script fixes LC_COLLATE = "C" (byte order, what Python's
# sorted() gives); under en_US.UTF-8 or C.UTF-8 R 4.2.2 sorts case-insensitively ("a" < "B").

invisible(Sys.setlocale("LC_COLLATE", "C"))
out <- file.path("tests", "data", "rmodelmatrix-4.2.2")
if (!dir.exists(out)) stop("run from the repository root")

set.seed(20240501)
n <- 40
trt <- rep(c("A", "B"), each = n / 2)
sam <- paste0(trt, sample(1:3, n, replace = TRUE))
obs <- data.frame(
  sam = sam,
  cls = sample(c("1", "2", "10"), n, replace = TRUE),
  trt = trt,
  case = sample(c("a", "B", "c"), n, replace = TRUE),
  grp = factor(sample(c("z", "a", "m"), n, replace = TRUE), levels = c("z", "a", "m")),
  libsize = round(runif(n, 1000, 3000)),
  x = round(rnorm(n), 6),
  time = round(runif(n, 0, 5), 3),
  stringsAsFactors = FALSE
)
write.csv(obs, file.path(out, "obs.csv"), row.names = FALSE)

lev <- do.call(rbind, lapply(c("sam", "cls", "trt", "case", "grp"), function(v) {
  data.frame(column = v, level = levels(as.factor(obs[[v]])))
}))
write.csv(lev, file.path(out, "levels.csv"), row.names = FALSE)

formulas <- c(
  "~ 0 + log(libsize) + cls + cls:trt", # the FLASHMM vignette
  "~ log(libsize) + cls + cls:trt",
  "~ trt + x",
  "~ cls*trt",
  "~ x:trt",
  "~ x + x:cls + trt",
  "~ trt + cls:trt",
  "~ 0 + grp + trt",
  "~ cls*x",
  "~ 0 + case",
  "~ 0 + sam",
  "~ 0 + sam:time",
  "~ trt*x + cls"
)
write.csv(data.frame(id = seq_along(formulas), formula = formulas),
          file.path(out, "formulas.csv"), row.names = FALSE)
for (i in seq_along(formulas)) {
  mm <- model.matrix(as.formula(formulas[i]), obs)
  df <- as.data.frame(format(mm, digits = 17, trim = TRUE), check.names = FALSE)
  colnames(df) <- colnames(mm)
  write.csv(df, file.path(out, sprintf("mm_%02d.csv", i)), row.names = FALSE, quote = TRUE)
}
writeLines(capture.output(sessionInfo()), file.path(out, "sessionInfo.txt"))
