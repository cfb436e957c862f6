"""Every ``figures/fig_*.py`` draws its outputs (PNG and PDF) from the tiny-run tables."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from validation.pipeline import EXPERIMENTS, OutputPaths, run_experiment

FIGURES = Path(__file__).resolve().parents[2] / "figures"
MODULES = sorted(p.stem for p in FIGURES.glob("fig_*.py"))


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory) -> Path:
    """Tables of the ``tiny`` variant of every experiment (written once per session)."""
    paths = OutputPaths.under(tmp_path_factory.mktemp("tiny-run"))
    for name in EXPERIMENTS:
        run_experiment(name, "tiny", paths, workers=1, force=False, quiet=True)
    return paths.results


def test_every_issue_figure_has_a_module():
    expected = {"fig_calibration_qq", "fig_type1", "fig_power", "fig_fdr_tpr", "fig_agreement",
                "fig_runtime"}  # fmt: skip
    assert expected <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_figure_module_draws_png_and_pdf(name, tiny_results, tmp_path):
    mod = importlib.import_module(f"figures.{name}")
    assert all((tiny_results / t).exists() for t in mod.INPUTS)
    written = mod.make(tiny_results, tmp_path)
    expected = {tmp_path / f"{o}.{ext}" for o in mod.OUTPUTS for ext in ("png", "pdf")}
    assert set(written) == expected
    for path in expected:
        assert path.stat().st_size > 1000, path
    assert (tmp_path / f"{mod.OUTPUTS[0]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / f"{mod.OUTPUTS[0]}.pdf").read_bytes()[:5] == b"%PDF-"


def test_qq_points_band_holds_uniform_order_statistics():
    from figures.fig_calibration_qq import qq_points

    n = 1000
    p = (np.arange(1, n + 1) - 0.5) / n
    expected, observed, low, high = qq_points(p[::-1], tail=50, bulk=40)
    np.testing.assert_allclose(observed, expected)
    assert np.all(low < expected) and np.all(expected < high)
    assert expected[0] == pytest.approx(-np.log10(0.5 / n))
