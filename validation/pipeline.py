"""``python -m validation``: experiments → figures → paper tables → ``REPORT.md``.

Each stage is skipped when it is up to date:

* an experiment when ``<results>/<name>.meta.json`` records the same stamp, a digest of its
  config variant, its own code (the module and its ``SOURCES``) and pyflashmm's source;
* a figure when ``<figures>/.stamps.json`` records the digest of its script, the shared
  ``figures/style.py`` and ``figures/tables.py`` and its input tables;
* the paper tables and the report are cheap and always rewritten.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from validation.config import load_config
from validation.provenance import REPO_ROOT, digest, git_revision

#: experiments in the order they run
EXPERIMENTS = ("agreement", "calibration", "power", "runtime", "scenario_null", "scenario_power")
FIGURES_DIR = REPO_ROOT / "figures"


@dataclass(frozen=True)
class OutputPaths:
    """Where the pipeline writes: results tables, figures, LaTeX tables and the report."""

    results: Path
    figures: Path
    tables: Path
    report: Path

    @classmethod
    def default(cls) -> OutputPaths:
        val = REPO_ROOT / "validation"
        return cls(val / "results", FIGURES_DIR, REPO_ROOT / "paper" / "tables", val / "REPORT.md")

    @classmethod
    def under(cls, root: Path) -> OutputPaths:
        root = Path(root)
        return cls(root / "results", root / "figures", root / "tables", root / "REPORT.md")


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _source_digest() -> str:
    files = sorted((REPO_ROOT / "src" / "pyflashmm").rglob("*.py"))
    return digest(*files)


def _data_files(paths) -> list[Path]:
    out = []
    for rel in paths:
        p = REPO_ROOT / rel
        out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return out


def experiment_stamp(name: str, cfg: dict) -> str:
    """Digest of what an experiment's results depend on: its config, its code (the module and
    its ``SOURCES``), the files and folders of its ``DATA``, what its ``environment(cfg)``
    reports (e.g. which R tools can run) and pyflashmm's source."""
    mod = importlib.import_module(f"validation.{name}")
    here = Path(mod.__file__).parent
    files = [Path(mod.__file__)] + [here / f"{s}.py" for s in getattr(mod, "SOURCES", ())]
    files += _data_files(getattr(mod, "DATA", ()))
    env = mod.environment(cfg) if hasattr(mod, "environment") else None
    return digest(cfg, env, *files, _source_digest())


def run_experiment(name: str, variant: str, paths: OutputPaths, *, workers: int, force: bool,
                   quiet: bool) -> list[Path]:  # fmt: skip
    """Run one experiment unless its results are up to date; returns its table paths."""
    mod = importlib.import_module(f"validation.{name}")
    cfg = load_config(name, variant)
    stamp = experiment_stamp(name, cfg)
    meta_path = paths.results / f"{name}.meta.json"
    if meta_path.exists() and not force:
        meta = json.loads(meta_path.read_text())
        tables = [paths.results / t for t in meta.get("tables", [])]
        if meta.get("stamp") == stamp and tables and all(t.exists() for t in tables):
            _log(f"[{name}] up to date ({variant}, {meta.get('git_rev')}), skipped", quiet)
            return tables
    _log(f"[{name}] running ({variant}) ...", quiet)
    t0 = time.perf_counter()
    tables = mod.run(cfg, results_dir=paths.results, workers=workers, progress=not quiet)
    seconds = time.perf_counter() - t0
    meta = {"experiment": name, "variant": variant, "stamp": stamp, "seed": cfg["seed"],
            "workers": workers, "cpu_count": os.cpu_count(),
            "git_rev": git_revision(), "seconds": round(seconds, 2),
            "tables": [Path(t).name for t in tables], "config": cfg}  # fmt: skip
    paths.results.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=1, default=str) + "\n")
    _log(f"[{name}] done in {seconds:.1f} s: {', '.join(Path(t).name for t in tables)}", quiet)
    return [Path(t) for t in tables]


def _figure_modules() -> list:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    names = sorted(p.stem for p in FIGURES_DIR.glob("fig_*.py"))
    return [importlib.import_module(f"figures.{n}") for n in names]


def make_figures(paths: OutputPaths, *, force: bool, quiet: bool) -> list[Path]:
    """Draw every figure whose input tables exist (PNG + PDF); returns the files written."""
    stamps_path = paths.figures / ".stamps.json"
    stamps = json.loads(stamps_path.read_text()) if stamps_path.exists() else {}
    written = []
    shared = (FIGURES_DIR / "style.py", FIGURES_DIR / "tables.py")
    for mod in _figure_modules():
        name = mod.__name__.rsplit(".", 1)[-1]
        inputs = [paths.results / t for t in mod.INPUTS]
        if not all(t.exists() for t in inputs):
            _log(f"[figures] {name}: input tables missing, skipped", quiet)
            continue
        stamp = digest(Path(mod.__file__), *shared, *inputs)
        outs = [paths.figures / f"{o}.{ext}" for o in mod.OUTPUTS for ext in ("png", "pdf")]
        if not force and stamps.get(name) == stamp and all(o.exists() for o in outs):
            continue
        paths.figures.mkdir(parents=True, exist_ok=True)
        written += mod.make(paths.results, paths.figures)
        stamps[name] = stamp
        _log(f"[figures] {name} drawn", quiet)
    if stamps:
        paths.figures.mkdir(parents=True, exist_ok=True)
        stamps_path.write_text(json.dumps(stamps, indent=1, sort_keys=True) + "\n")
    return written


def run_pipeline(variant: str = "quick", *, only: list[str] | None = None,
                 paths: OutputPaths | None = None, workers: int = 1, force: bool = False,
                 quiet: bool = False, experiments: bool = True) -> dict:  # fmt: skip
    """Run experiments (all, or ``only``; none with ``experiments=False``), then figures, paper
    tables and the report from the results present.

    Returns ``{"tables": [...], "figures": [...], "tex": [...], "report": Path}``.
    """
    paths = paths or OutputPaths.default()
    names = list(EXPERIMENTS if not only else only)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"--only: unknown experiment(s) {unknown}; choose from {EXPERIMENTS}")
    tables = []
    for name in names if experiments else []:
        tables += run_experiment(name, variant, paths, workers=workers, force=force,
                                 quiet=quiet)  # fmt: skip
    figures = make_figures(paths, force=force, quiet=quiet)
    paper = importlib.import_module("validation.paper_tables")
    tex = paper.make(paths.results, paths.tables)
    report = importlib.import_module("validation.report")
    report_path = report.write_report(paths.results, paths.figures, paths.report)
    _log(f"[report] {report_path}", quiet)
    if paths == OutputPaths.default():
        readme = importlib.import_module("validation.readme_tables").update_readme(paths.results)
        _log(f"[readme] generated tables of {readme}", quiet)
    return {"tables": tables, "figures": figures, "tex": tex, "report": report_path}
