"""Experiment configs: ``configs/<name>.toml`` with one table per variant.

Every config file has a top-level ``seed`` and the tables ``[tiny]`` (the test suite's run,
seconds), ``[quick]`` (``make reproduce``, minutes) and ``[full]`` (the paper, hours). A
variant's table holds that variant's values; keys missing from it are taken from ``[quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
VARIANTS = ("tiny", "quick", "full")


def load_config(name: str, variant: str) -> dict:
    """The config of experiment ``name`` for ``variant`` (``seed`` and ``variant`` included)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    path = CONFIG_DIR / f"{name}.toml"
    if not path.exists():
        raise ValueError(f"no config for experiment {name!r} (expected {path})")
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    if "seed" not in raw or "quick" not in raw:
        raise ValueError(f"{path}: needs a top-level 'seed' and a [quick] table")
    cfg = dict(raw["quick"])
    cfg.update(raw.get(variant, {}))
    cfg["seed"] = int(raw["seed"])
    cfg["variant"] = variant
    return cfg


def check_config(cfg: dict, name: str, required: tuple[str, ...], rules: dict) -> None:
    """Raise ``ValueError`` naming the key when ``cfg`` lacks a required key or breaks a rule.

    ``rules`` maps a key to ``(predicate, description)``; a list value is checked element by
    element. Experiments call this before any work is done.
    """
    where = f"configs/{name}.toml [{cfg.get('variant', '?')}]"
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    for key, (ok, what) in rules.items():
        if key not in cfg:
            continue
        values = cfg[key] if isinstance(cfg[key], list | tuple) else [cfg[key]]
        bad = [v for v in values if not ok(v)]
        if bad or not values:
            raise ValueError(f"{where}: {key} must be {what}, got {cfg[key]!r}")
