"""The whole validation pipeline on its tiny variant: every table, figure, LaTeX table and the
report are produced, parse and hold what the contract (validation/README.md) says."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from matplotlib.image import imread

from validation.__main__ import main
from validation.config import load_config
from validation.methods import METHODS
from validation.pipeline import EXPERIMENTS, _figure_modules
from validation.schema import PROVENANCE, TABLES


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    argv = ["--tiny", "--out", str(out), "--workers", "1", "--quiet"]
    assert main(argv) == 0
    return out


def _expected_rows(name: str) -> int | None:
    """Rows a tiny-run table must have, derived from the tiny configs (None: data-dependent)."""
    cal, pw = load_config("calibration", "tiny"), load_config("power", "tiny")
    n_methods = len(METHODS)
    cal_settings = (
        len(cal["var_random_effects"]) * len(cal["n_subjects"]) * len(cal["cells_per_subject"])
    )
    pw_settings = (
        len(pw["scopes"])
        * len(pw["abs_beta"])
        * len(pw["n_subjects"])
        * len(pw["cells_per_subject"])
    )
    return {
        "calibration_type1.csv": cal_settings * n_methods * len(cal["alpha"]),
        "calibration_pvalues.csv.gz": cal_settings * cal["replicates"] * n_methods
        * cal["n_genes"],
        "power_summary.csv": pw_settings * n_methods * len(pw["thresholds"]),
    }.get(name)  # fmt: skip


def test_every_table_parses_with_its_columns_and_rows(tiny_run):
    for name, (experiment, cols) in TABLES.items():
        path = tiny_run / "results" / name
        assert path.exists(), name
        df = pd.read_csv(path)
        assert list(df.columns) == [*cols, *PROVENANCE], name
        assert len(df) > 0, name
        expected = _expected_rows(name)
        assert expected is None or len(df) == expected, (name, len(df), expected)
        assert df["git_rev"].notna().all() and (df["seed"] >= 0).all(), name
        meta = json.loads((tiny_run / "results" / f"{experiment}.meta.json").read_text())
        assert meta["variant"] == "tiny" and name in meta["tables"]


def test_every_figure_is_drawn_as_png_and_pdf(tiny_run):
    modules = _figure_modules()
    assert modules, "no figures/fig_*.py found"
    for mod in modules:
        for base in mod.OUTPUTS:
            for ext in ("png", "pdf"):
                f = tiny_run / "figures" / f"{base}.{ext}"
                assert f.exists() and f.stat().st_size > 1000, f
            img = imread(tiny_run / "figures" / f"{base}.png")
            assert img.ndim == 3 and min(img.shape[:2]) > 100 and img.std() > 0, base
            assert (tiny_run / "figures" / f"{base}.pdf").read_bytes()[:5] == b"%PDF-"


def test_latex_tables_and_report(tiny_run):
    tex = sorted(p.name for p in (tiny_run / "tables").glob("*.tex"))
    assert tex == ["agreement.tex", "power.tex", "runtime.tex", "type1.tex"]
    for p in (tiny_run / "tables").glob("*.tex"):
        text = p.read_text()
        assert text.count(r"\begin{tabular}") == 1 and r"\bottomrule" in text
    report = (tiny_run / "REPORT.md").read_text()
    for mod in _figure_modules():
        for base in mod.OUTPUTS:
            assert f"figures/{base}.png" in report
    assert "Comparison with published findings" in report
    assert "nan" not in report.lower().replace("nanmean", "")
    for name in EXPERIMENTS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} | tiny |"))
        assert row.count("|") == 7 and "| 1 / " in row, row


def test_second_run_skips_what_is_up_to_date(tiny_run, capsys):
    metas = {p.name: p.read_text() for p in (tiny_run / "results").glob("*.meta.json")}
    argv = ["--tiny", "--out", str(tiny_run), "--workers", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("up to date") == len(EXPERIMENTS)
    assert {p.name: p.read_text() for p in (tiny_run / "results").glob("*.meta.json")} == metas


def test_report_only_redraws_without_running(tiny_run, capsys):
    metas = {p.name: p.read_text() for p in (tiny_run / "results").glob("*.meta.json")}
    (tiny_run / "REPORT.md").unlink()
    assert main(["--tiny", "--out", str(tiny_run), "--report-only", "--force"]) == 0
    err = capsys.readouterr().err
    assert "up to date" not in err and "running" not in err  # no experiment was looked at
    assert "[figures]" in err and (tiny_run / "REPORT.md").exists()
    assert {p.name: p.read_text() for p in (tiny_run / "results").glob("*.meta.json")} == metas


def test_unknown_experiment_is_a_clear_error(tmp_path, capsys):
    argv = ["--tiny", "--out", str(tmp_path), "--only", "calibraton"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "calibraton" in err and len(err.strip().splitlines()) == 1


def test_supplement_uses_only_generated_figures_and_tables(tiny_run):
    import re

    from validation.provenance import REPO_ROOT

    tex = (REPO_ROOT / "paper" / "supplement.tex").read_text()
    figures = set(re.findall(r"\\includegraphics\[[^]]*\]\{([^}]+)\.pdf\}", tex))
    tables = set(re.findall(r"\\input\{tables/([^}]+)\.tex\}", tex))
    outputs = {base for mod in _figure_modules() for base in mod.OUTPUTS}
    assert figures and figures <= outputs
    assert tables == {p.stem for p in (tiny_run / "tables").glob("*.tex")}


def test_tiny_needs_an_output_folder(capsys):
    assert main(["--tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m validation: error:") and "--out" in err


def test_command_line_help_and_usage_errors():
    """``python -m validation`` from the repository root: help with examples, exit code 2 with
    one line on stderr for a bad option value, argparse's usage error for an unknown option."""
    from validation.provenance import REPO_ROOT

    def run(*args):
        return subprocess.run([sys.executable, "-m", "validation", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    ok = run("--help")
    assert ok.returncode == 0 and "examples:" in ok.stdout and "--quick" in ok.stdout
    bad = run("--tiny", "--workers", "0", "--out", "unused")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == "python -m validation: error: --workers must be >= 1, got 0"
    unknown = run("--demo")
    assert unknown.returncode == 2 and "unrecognized arguments: --demo" in unknown.stderr


def test_results_do_not_depend_on_the_number_of_workers(tmp_path):
    """Replicates get their own SeedSequence children: 1 and 2 worker processes give the same
    calibration and power tables (provenance columns aside)."""
    from validation import calibration, power

    for mod in (calibration, power):
        cfg = load_config(mod.NAME, "tiny") | {"replicates": 2}
        tables = {}
        for workers in (1, 2):
            out = tmp_path / f"{mod.NAME}-{workers}"
            paths = mod.run(cfg, results_dir=out, workers=workers, progress=False)
            tables[workers] = [pd.read_csv(p) for p in paths]
        for a, b in zip(tables[1], tables[2], strict=True):
            pd.testing.assert_frame_equal(a, b)
