# Can R run an anchor? Loads every package named on the command line (library(), as the
# scripts of this folder do) and exits with status 0 when all load, 1 otherwise (naming the
# missing ones on stderr). Used by validation/r_tools.py and the benchmarks before they run a
# script here, so that a missing package is a skipped tool rather than a failure.
# Usage: Rscript check_packages.R PACKAGE [PACKAGE ...]
pkgs <- commandArgs(trailingOnly = TRUE)
loads <- function(p) {
  tryCatch({
    suppressPackageStartupMessages(library(p, character.only = TRUE))
    TRUE
  }, error = function(e) FALSE)
}
ok <- vapply(pkgs, loads, logical(1))
if (!all(ok)) {
  message("R cannot load: ", paste(pkgs[!ok], collapse = ", "))
  quit(status = 1)
}
quit(status = 0)
