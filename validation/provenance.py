"""Where a result came from: seed, package version and git revision on every table row.

Tables are CSV (``.csv``, or ``.csv.gz`` for long per-gene tables) so that they diff, load
anywhere and need no extra dependency; :func:`figures.tables.read_table` reads them (the figures
and the report read tables through it, never through this module).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd

import pyflashmm

REPO_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The short git revision of the checkout, with ``+dirty`` when files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "validation"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def write_table(df: pd.DataFrame, path: Path, *, seed: int | None) -> Path:
    """Write ``df`` to ``path`` with the provenance columns ``seed``, ``version``, ``git_rev``.

    The columns are appended last, so a table's own columns come first. Returns ``path``.
    """
    out = df.copy()
    out["seed"] = -1 if seed is None else int(seed)
    out["version"] = pyflashmm.__version__
    out["git_rev"] = git_revision()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, float_format="%.10g")
    return path


def digest(*parts) -> str:
    """A short SHA-256 of JSON-serialisable parts and file contents (``Path`` objects)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
