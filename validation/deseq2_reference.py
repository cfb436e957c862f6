"""The committed DESeq2 1.38.3 reference results (``tests/data/deseq2-1.38.3/``).

Loaders shared by the tests (``tests/nbglm/test_deseq2_reference.py``) and the agreement
experiment (:mod:`validation.agreement`). The fixtures and the R script that wrote them
(``make_fixtures.R``) stay next to each other in ``tests/data``; see the README there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from validation.provenance import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "deseq2-1.38.3"

#: DESeq() arguments of a scenario besides the design and the test (see make_fixtures.R), as
#: nbglm arguments, and the size-factor method they imply
NBGLM_ARGS = {"single_cell": {"preset": "single_cell"}, "outliers_low_minmu": {"minmu": 1e-6}}
SIZE_FACTOR_METHOD = {"single_cell": "poscounts"}


def load_scenario(name):
    """Counts (samples × genes), design, DESeq2's results and the matching nbglm arguments."""
    d = DATA / name
    cts = pd.read_csv(d / "counts.csv.gz", index_col=0)
    X = pd.read_csv(d / "design.csv")
    res = pd.read_csv(d / "results.csv")
    info = pd.read_csv(d / "info.csv").set_index("key")["value"]
    sf = pd.read_csv(d / "size_factors.csv")["sizeFactor"].to_numpy()
    red = pd.read_csv(d / "reduced.csv").to_numpy() if (d / "reduced.csv").exists() else None
    args = {"test": "lrt", "reduced": red} if red is not None else {}
    args.update(NBGLM_ARGS.get(name, {}))
    return {
        "Y": np.ascontiguousarray(cts.T.to_numpy(dtype=np.float64)),
        "X": X,
        "res": res,
        "info": info,
        "sf": sf,
        "reduced": red,
        "nbglm_args": args,  # nbglm(Y, X, **nbglm_args) is the fixture's DESeq() call
        "sf_method": SIZE_FACTOR_METHOD.get(name, "ratio"),
    }
