"""Every ``figures/fig_*.py`` draws its outputs (PNG and PDF) from the tiny-run tables and from
small synthetic tables, and the figures hold what a referee checks: panel letters, a linear
0–15% type-I axis with clipped rates written out, no empty panels, counts of discoveries rather
than ratios of a handful, measured and extrapolated times told apart, distinct method styles."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from figures import style
from validation.pipeline import EXPERIMENTS, OutputPaths, run_experiment

FIGURES = Path(__file__).resolve().parents[2] / "figures"
MODULES = sorted(p.stem for p in FIGURES.glob("fig_*.py"))
#: experiments whose tables feed figures but that are not (yet) pipeline stages
EXTRA_EXPERIMENTS = ("scenario_null",)
#: figures that must draw from the tiny tables and pass the referee checks below
CHECKED = ("fig_agreement", "fig_calibration_qq", "fig_fdr_tpr", "fig_power", "fig_runtime",
           "fig_type1", "fig_scenario_type1", "fig_scenario_qq", "fig_scenario_tails")  # fmt: skip
#: the method ids of the comparison (each must have a label and a style)
METHOD_IDS = ("lmm", "lmm_satterthwaite", "lmm_between_within", "lmm_moderated", "lm", "nbmm",
              "pseudobulk", "nbglm_cells", "wilcoxon", "edger_ql", "limma_voom", "deseq2_r",
              "glmmtmb", "lmertest", "dream")  # fmt: skip


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory) -> Path:
    """Tables of the ``tiny`` variant of every experiment (written once per session)."""
    paths = OutputPaths.under(tmp_path_factory.mktemp("tiny-run"))
    for name in (*EXPERIMENTS, *(e for e in EXTRA_EXPERIMENTS if e not in EXPERIMENTS)):
        run_experiment(name, "tiny", paths, workers=1, force=False, quiet=True)
    return paths.results


@pytest.fixture
def captured(monkeypatch) -> list:
    """The figures that ``style.save`` writes during a test, kept open for inspection."""
    figs = []
    real = style.save

    def save(fig, out_dir, name):
        figs.append(fig)
        fig.canvas.draw()
        paths = [Path(out_dir) / f"{name}.{ext}" for ext in ("png", "pdf")]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for p in paths:
            fig.savefig(p)
        return paths

    monkeypatch.setattr(style, "save", save)
    yield figs
    monkeypatch.setattr(style, "save", real)
    for fig in figs:
        plt.close(fig)


def _panels(fig) -> list:
    """The visible axes of a figure (legend-only and hidden axes excluded)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


def _has_data(ax) -> bool:
    lines = [ln for ln in ax.lines if np.isfinite(np.asarray(ln.get_ydata(), float)).any()]
    return bool(lines or ax.collections or ax.patches)


def _letters(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "panel_letter"]


def _clipped(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "clipped"]


def referee_checks(fig) -> None:
    """No empty panel, and every panel of a multi-panel figure lettered a, b, c … in order."""
    panels = _panels(fig)
    assert panels
    for ax in panels:
        assert _has_data(ax), f"empty panel {ax.get_title()!r}"
    if len(panels) > 1:
        assert _letters(fig) == [style.letter(k) for k in range(len(panels))]


def test_every_issue_figure_has_a_module():
    expected = {"fig_calibration_qq", "fig_type1", "fig_power", "fig_fdr_tpr", "fig_agreement",
                "fig_runtime", "fig_scenario_type1", "fig_scenario_qq",
                "fig_scenario_tails"}  # fmt: skip
    assert expected <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_figure_module_draws_png_and_pdf(name, tiny_results, tmp_path):
    mod = importlib.import_module(f"figures.{name}")
    missing = [t for t in mod.INPUTS if not (tiny_results / t).exists()]
    if missing and name not in CHECKED:
        pytest.skip(f"{name}: the tiny run writes no {missing}")
    assert not missing
    written = mod.make(tiny_results, tmp_path)
    expected = {tmp_path / f"{o}.{ext}" for o in mod.OUTPUTS for ext in ("png", "pdf")}
    assert set(written) == expected
    for path in expected:
        assert path.stat().st_size > 1000, path
    assert (tmp_path / f"{mod.OUTPUTS[0]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / f"{mod.OUTPUTS[0]}.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("name", CHECKED)
def test_tiny_figures_pass_the_referee_checks(name, tiny_results, tmp_path, captured):
    mod = importlib.import_module(f"figures.{name}")
    mod.make(tiny_results, tmp_path)
    assert len(captured) == len(mod.OUTPUTS)
    for fig in captured:
        referee_checks(fig)


def test_qq_points_band_holds_uniform_order_statistics():
    from figures.fig_calibration_qq import qq_points

    n = 1000
    p = (np.arange(1, n + 1) - 0.5) / n
    expected, observed, low, high = qq_points(p[::-1], tail=50, bulk=40)
    np.testing.assert_allclose(observed, expected)
    assert np.all(low < expected) and np.all(expected < high)
    assert expected[0] == pytest.approx(-np.log10(0.5 / n))


# --- style ---------------------------------------------------------------------------------


def _lab(color) -> np.ndarray:
    """CIE L*a*b* of an sRGB colour (D65)."""
    rgb = np.array(to_rgb(color))
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ lin / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_method_has_a_label_and_a_style():
    for m in METHOD_IDS:
        assert m in style.METHOD_LABELS and style.method_label(m) != m
        assert m in style.METHOD_STYLES
    kw = style.method_style("not_a_method")
    assert kw["color"] and kw["marker"] in style.MARKERS


@pytest.mark.parametrize("table", ["methods", "tools"])
def test_similar_colours_differ_in_marker_and_line(table):
    """Two styles whose colours are close (ΔE < 30) differ in marker and in line style or
    marker fill, so every pair can be told apart."""
    styles = style.METHOD_STYLES if table == "methods" else {
        t: (*s, False) for t, s in style.TOOL_STYLES.items()}  # fmt: skip
    for (a, sa), (b, sb) in itertools.combinations(styles.items(), 2):
        if np.linalg.norm(_lab(sa[0]) - _lab(sb[0])) >= 30:
            continue
        assert sa[1] != sb[1], (a, b, "same marker")
        assert str(sa[2]) != str(sb[2]) or sa[3] != sb[3], (a, b, "same line and fill")


def test_old_pair_is_now_distinct():
    a, b = style.METHOD_STYLES["lmm_satterthwaite"], style.METHOD_STYLES["lmm_residual_df"]
    assert a[1] != b[1] and a[2] != b[2]


def test_letters():
    assert [style.letter(k) for k in (0, 1, 25, 26, 27)] == ["a", "b", "z", "aa", "ab"]


def test_wilson_interval_is_the_score_interval():
    """Against the interval written out from its definition: the p with
    |k/n − p| = z √(p(1 − p)/n), the roots of a quadratic in p."""
    k, n = np.array([0, 3, 50, 10]), np.array([10, 40, 100, 10])
    z = 1.959963984540054
    a, b, c = 1 + z**2 / n, -(2 * k / n + z**2 / n), (k / n) ** 2
    disc = np.sqrt(b**2 - 4 * a * c)
    lo, hi = style.wilson_interval(k, n)
    np.testing.assert_allclose(lo, (-b - disc) / (2 * a), atol=1e-12)
    np.testing.assert_allclose(hi, (-b + disc) / (2 * a), atol=1e-12)


# --- synthetic tables ----------------------------------------------------------------------


def _type1_table() -> pd.DataFrame:
    """A ``calibration_type1.csv``-like table: one calibrated method, one at 40%, one setting
    (σ_b² = 0.1, 1000 cells) missing."""
    rows = []
    for vre, cells, s, a in itertools.product((0.0, 0.1), (50, 1000), (6, 20), (0.05, 0.01)):
        if (vre, cells) == (0.1, 1000):
            continue
        for m, rate in (("lmm_satterthwaite", a), ("nbglm_cells", 0.4)):
            n = 500
            k = round(rate * n)
            lo, hi = style.wilson_interval(k, n)
            rows.append(dict(var_random_effects=vre, n_subjects=s, cells_per_subject=cells,
                             method=m, alpha=a, n_tests=n, n_failed=0, n_rejected=k,
                             type1_error=k / n, ci_low=lo, ci_high=hi))  # fmt: skip
    return pd.DataFrame(rows)


def test_type1_axis_is_linear_0_to_15_percent_and_clipped_rates_are_written():
    from figures import fig_type1

    style.setup()
    fig = fig_type1.figure(_type1_table(), 0.05)
    fig.canvas.draw()
    panels = _panels(fig)
    assert len(panels) == 3  # the missing setting is not drawn as an empty panel
    for ax in panels:
        assert ax.get_ylim() == pytest.approx((0, 0.15))
        assert ax.get_yscale() == "linear"
    assert _clipped(fig) == ["40%"] * 6  # 3 panels × 2 donor counts
    referee_checks(fig)
    plt.close(fig)
    fig = fig_type1.figure(_type1_table(), 0.01)
    assert all(ax.get_ylim() == pytest.approx((0, 0.05)) for ax in _panels(fig))
    plt.close(fig)


def _scenario_type1_table() -> pd.DataFrame:
    """A ``scenario_null_type1.csv``-like table: two scenarios, pseudobulk absent from one
    setting, the ``all`` rows and a per-cell-type row that must be ignored."""
    rows = []
    for sc, s, m in itertools.product(("droplet", "gamma_donors"), (4, 10), (20, 200)):
        for meth, rate in (("lmm", 0.04), ("pseudobulk", 0.05), ("wilcoxon", 0.45)):
            if meth == "pseudobulk" and (sc, s, m) == ("droplet", 4, 20):
                continue
            for ct in ("all", "B"):
                n = 1000
                row = dict(scenario=sc, n_donors=s, cells_per_donor=m, method=meth,
                           cell_type=ct, n_tests=n, n_failed=0)  # fmt: skip
                for a in (0.05, 0.01, 0.001):
                    r = rate if ct == "all" else 0.9
                    lo, hi = style.wilson_interval(round(r * a / 0.05 * n), n)
                    row |= {f"type1_{a:g}": r * a / 0.05, f"lo_{a:g}": float(lo),
                            f"hi_{a:g}": float(hi)}  # fmt: skip
                for t in (1e-3, 1e-4):
                    row |= {f"tail_{t:g}": int(rate * t / 0.05 * n), f"expected_{t:g}": n * t,
                            f"tail_ok_{t:g}": True}  # fmt: skip
                rows.append(row)
    return pd.DataFrame(rows)


def test_scenario_type1_small_multiples(tmp_path, captured):
    from figures import fig_scenario_type1

    df = _scenario_type1_table()
    df.to_csv(tmp_path / "scenario_null_type1.csv", index=False)
    fig_scenario_type1.make(tmp_path, tmp_path)
    fig05, fig01 = captured
    panels = _panels(fig05)
    assert len(panels) == 4  # 2 scenarios × 2 cells per donor
    assert all(ax.get_ylim() == pytest.approx((0, 0.15)) for ax in panels)
    # wilcoxon at 45% (the "all" rows, never the per-cell-type 90%) is clipped and written
    assert sorted(set(_clipped(fig05))) == ["45%"] and len(_clipped(fig05)) == 8
    assert all(ax.get_ylim() == pytest.approx((0, 0.05)) for ax in _panels(fig01))
    for fig in captured:
        referee_checks(fig)


def test_scenario_figures_draw_one_setting_and_missing_methods(tmp_path, captured):
    from figures import fig_scenario_qq, fig_scenario_tails, fig_scenario_type1
    from validation.scenario_null import qq_table

    df = _scenario_type1_table()
    one = df[(df["n_donors"] == 4) & (df["cells_per_donor"] == 20) & (df["scenario"] == "droplet")]
    one.to_csv(tmp_path / "scenario_null_type1.csv", index=False)
    rng = np.random.default_rng(0)
    pv = pd.DataFrame({"scenario": "droplet", "n_donors": 4, "cells_per_donor": 20,
                       "replicate": 0, "method": np.repeat(["lmm", "wilcoxon"], 300),
                       "cell_type": "B", "gene": np.tile(np.arange(300), 2),
                       "p_value": rng.uniform(size=600), "status": "ok"})  # fmt: skip
    pv.loc[::50, "p_value"] = np.nan
    qq_table(pv).to_csv(tmp_path / "scenario_null_qq.csv.gz", index=False)
    for mod in (fig_scenario_type1, fig_scenario_qq, fig_scenario_tails):
        mod.make(tmp_path, tmp_path)
    assert len(captured) == 5
    for fig in captured:
        referee_checks(fig)
    # the QQ caption says that 294 tests cannot reach −log10 p = 5
    qq = captured[2]
    title = qq.legends[0].get_title().get_text()
    assert "294" in title and "50,000" in title


def test_scenario_tails_interval_is_that_of_validation_metrics():
    from figures.fig_scenario_tails import poisson_interval
    from validation.metrics import tail_counts

    p = np.linspace(0, 1, 1800)
    for t in tail_counts(p, (1e-3, 1e-4)):
        lo, hi = poisson_interval(t["expected"])
        assert (lo, hi) == (t["lo"], t["hi"])


def test_power_shows_counts_and_no_fdr_from_few_discoveries():
    from figures import fig_power

    rows = []
    methods = ("lmm_satterthwaite", "nbglm_pseudobulk")
    for scope, beta, method in itertools.product(("within_type",), (0.2, 0.8), methods):
        tp, fp = (1, 2) if method == "lmm_satterthwaite" else (60, 5)  # 3 vs 65 discoveries
        rows.append(dict(scope=scope, abs_beta=beta, n_subjects=6, cells_per_subject=200,
                         method=method, threshold=0.05, n_de=100, tp=tp, fp=fp, tpr=tp / 100,
                         observed_fdr=fp / (tp + fp), auc=0.7))  # fmt: skip
    style.setup()
    fig = fig_power.figure(pd.DataFrame(rows))
    fig.canvas.draw()
    referee_checks(fig)
    tpr, disc, fdr, _ = _panels(fig)
    ys = np.concatenate([np.asarray(ln.get_ydata(), float) for ln in fdr.lines])
    assert not np.any(np.isclose(ys, 2 / 3))  # 2 false of 3 calls: not drawn
    assert np.any(np.isclose(ys, 5 / 65))
    counts = np.concatenate([np.asarray(ln.get_ydata(), float) for ln in disc.lines])
    assert {3.0, 2.0, 65.0, 5.0} <= set(counts)  # all and false discoveries
    assert disc.get_yscale() == "symlog"
    plt.close(fig)


def _runtime_table(with_r: bool) -> pd.DataFrame:
    rows = []
    for axis, n in (("cells", 1000), ("cells", 10000), ("genes", 100)):
        pt = dict(axis=axis, n_cells=n, n_genes=100 if axis == "cells" else 100, n_subjects=10)
        rows.append(pt | dict(tool="pyflashmm_lmm", seconds=0.01, peak_mem_mb=5.0,
                              status="ok", note="REML, all genes"))  # fmt: skip
        scaled = "REML, timed on 2 genes, scaled to 100"
        rows.append(pt | dict(tool="statsmodels_mixedlm", seconds=5.0, peak_mem_mb=0.004,
                              status="ok", note=scaled))  # fmt: skip
        rows.append(pt | dict(tool="lme4", seconds=4.0 if with_r else np.nan,
                              peak_mem_mb=300.0 if with_r else np.nan,
                              status="ok" if with_r else "skipped",
                              note="lmer REML, timed on 2 genes, scaled to 100; peak = whole "
                              "R process" if with_r else "Rscript not found"))  # fmt: skip
    return pd.DataFrame(rows)


def test_runtime_marks_extrapolated_times_and_separates_r_memory():
    from figures import fig_runtime

    df = _runtime_table(True)
    assert fig_runtime.extrapolated(df).tolist() == [False, True, True] * 3
    note = "lmm() on the same summary statistics, 500 genes scaled to 500"
    assert not fig_runtime.extrapolated(pd.DataFrame({"note": [note]}))[0]
    style.setup()
    fig = fig_runtime.figure(df)
    fig.canvas.draw()
    referee_checks(fig)
    labels = [ax.get_ylabel() for ax in _panels(fig)]
    assert any("increase" in y for y in labels) and any("whole R process" in y for y in labels)
    time_ax = _panels(fig)[0]
    open_pts = [ln for ln in time_ax.lines if ln.get_markerfacecolor() == "white"]
    assert sum(len(ln.get_xdata()) for ln in open_pts) == 4  # statsmodels and lme4, 2 points
    assert any(ln.get_linestyle() == ":" for ln in time_ax.lines)  # segments to them dotted
    plt.close(fig)
    fig = fig_runtime.figure(_runtime_table(False))  # no R: no R memory row
    fig.canvas.draw()
    referee_checks(fig)
    assert not any("R process" in ax.get_ylabel() for ax in _panels(fig))
    plt.close(fig)
