"""Reading the result tables that the validation experiments write (``validation/results/``).

Tables are CSV (``.csv``, or ``.csv.gz`` for long per-gene tables; pandas infers the
compression from the name), each ending with the provenance columns ``seed``, ``version``,
``git_rev``. Figures read them through :func:`read_table` only, so that ``figures/`` depends on
the tables' format and not on the code that computed them (``validation/`` imports
``figures/`` to draw them, never the reverse).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_table(path: Path) -> pd.DataFrame:
    """Read one results table (``.csv`` or ``.csv.gz``)."""
    return pd.read_csv(path)
