r"""The report's reading of the scenario experiments: verdicts per scenario, computed.

Every sentence is a condition on the tables of :mod:`validation.scenario_null` and
:mod:`validation.scenario_power`; nothing is typed in by hand.

Calibration verdict of a method in one setting (scenario, S donors, m cells per donor; the row
pooled over the tested cell types and replicates), the issue's rule: **calibrated** when the
lower end of the Wilson 95% interval of its type-I error is at or below α for α = 0.05 and
α = 0.01 *and* its counts of null p ≤ 10⁻³ and ≤ 10⁻⁴ do not exceed the upper end of their
Poisson 99% interval (fewer is conservative, which is not a calibration failure); **inflated**
otherwise. A method is called calibrated in a scenario when it is calibrated in every setting of
that scenario; otherwise the settings where it fails are named. The claims below use this rule.

Beside it, the **corrected** verdict, because the plain one is k tests per method and scenario
(k settings) on correlated tests: inflated at α when the lower end of the two-sided Wilson
interval of level 1 − 0.05/k (Bonferroni over the settings) exceeds α *and*, where the setting
has at least three replicates, so does the lower end of the Student-t 95% interval over the
replicates (``rep_lo_<α>`` of :func:`validation.scenario_null.with_replicate_intervals`: the
replicates are independent data sets, while the tests of one data set share its design and a
gene's tests in different cell types share its donor effects); or when a tail count exceeds the
upper end of the central Poisson interval of level 1 − 0.01/k. It can only be more lenient than
the plain rule; where the two differ, the failure is within what k correlated tests give by
chance.

Power: the method with the highest mean TPR at matched observed FDR 0.05 (replicate means; the
table gives their intervals), over all methods and over the calibrated ones.

The published claims checked (each per scenario, from the same verdicts):

* Squair et al. 2021, Crowell et al. 2020, Murphy & Skene 2022: pseudobulk methods are
  calibrated, methods that take cells as replicates are not, and pseudobulk is the most
  powerful of the calibrated methods (Crowell: edgeR / limma on sums best overall);
* Zimmerman et al. 2021: ignoring the donor inflates the type-I error; pseudobulk is
  conservative and less powerful than a mixed model;
* Gagnon et al. 2022: the NB GLMM (glmmTMB, NEBULA) is among the best;
* FLASHMM (Xu et al. 2026): the LMM with a donor random effect controls the type-I error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from validation import summaries
from validation.scenario_null import ALPHAS
from validation.scenarios import SCENARIOS
from validation.summaries import method_label, percent

TAILS = ("0.001", "0.0001")
#: method families of the literature's claims
PSEUDOBULK = ("pseudobulk", "edger_ql", "limma_voom", "deseq2_r")
CELLS_AS_REPLICATES = ("nbglm_cells", "wilcoxon", "lm")
MIXED = (
    "lmm",
    "lmm_satterthwaite",
    "lmm_between_within",
    "lmm_moderated",
    "nbmm",
    "dream",
    "glmmtmb",
    "lmertest",
)
NB_MIXED = ("nbmm", "glmmtmb")
#: methods scored on a random gene subset (left out of the power ranking)
SUBSET_METHODS = ("glmmtmb", "lmertest")
LMM_DEFAULT = "lmm"
SETTING = ["n_donors", "cells_per_donor"]


def setting_verdicts(type1: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario, setting and method (the rows pooled over cell types) with the
    plain verdict ``calibrated`` and its ``reason`` (what failed), the corrected verdict
    ``calibrated_corrected`` and ``reason_corrected``, the rates at 0.05 and 0.01 and the number
    of settings ``k`` of the correction (the module docstring states both rules)."""
    from scipy import stats

    from validation.metrics import wilson_interval

    t = type1[type1["cell_type"].astype(str) == "all"].copy()
    t["k"] = t.groupby(["scenario", "method"])["method"].transform("size")
    rows = []
    for _, r in t.iterrows():
        plain, corrected = [], []
        k, n = int(r["k"]), int(r["n_tests"])
        n_rep = int(r["n_replicates"]) if np.isfinite(r.get("n_replicates", np.nan)) else 0
        for a in ALPHAS:
            rate = float(r[f"type1_{a:g}"])
            what = f"type-I {percent(rate)} at α = {a:g}"
            if r[f"lo_{a:g}"] > a:
                plain.append(what)
            lo = float(wilson_interval(round(rate * n), n, 1 - 0.05 / k)[0]) if n else np.nan
            rep_lo = float(r.get(f"rep_lo_{a:g}", np.nan))
            replicates_agree = n_rep < 3 or not np.isfinite(rep_lo) or rep_lo > a
            if lo > a and replicates_agree:
                corrected.append(what)
        for key in TAILS:
            obs, exp = r.get(f"tail_{key}"), r.get(f"expected_{key}")
            if obs is None or not np.isfinite(obs):
                continue
            what = f"{int(obs)} p ≤ {float(key):g} (expected {exp:.1f})"
            if not bool(r.get(f"tail_ok_{key}", True)) and obs > exp:
                plain.append(what)
            if obs > stats.poisson.ppf(1 - 0.005 / k, float(exp)):
                corrected.append(what)
        rows.append(
            {
                "scenario": r["scenario"],
                "n_donors": int(r["n_donors"]),
                "cells_per_donor": int(r["cells_per_donor"]),
                "method": r["method"],
                "n_tests": n,
                "n_replicates": n_rep,
                "k": k,
                "type1_005": r["type1_0.05"],
                "type1_001": r["type1_0.01"],
                "calibrated": not plain,
                "reason": "; ".join(plain),
                "calibrated_corrected": not corrected,
                "reason_corrected": "; ".join(corrected),
            }
        )
    return pd.DataFrame(rows)


def scenario_verdicts(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and method: ``calibrated`` in every setting, the settings that failed,
    and the range of the per-setting type-I error at 0.05."""
    out = []
    for (sc, m), g in verdicts.groupby(["scenario", "method"], sort=False):
        bad = g[~g["calibrated"]]
        out.append(
            {
                "scenario": sc,
                "method": m,
                "n_settings": len(g),
                "n_calibrated": int(g["calibrated"].sum()),
                "calibrated": bad.empty,
                "n_calibrated_corrected": int(g["calibrated_corrected"].sum()),
                "calibrated_corrected": bool(g["calibrated_corrected"].all()),
                "failed_settings": "; ".join(
                    f"{r.n_donors} donors × {r.cells_per_donor} cells ({r.reason})"
                    for r in bad.itertuples()
                ),
                "min_005": float(g["type1_005"].min()),
                "max_005": float(g["type1_005"].max()),
                "failed_few_donors_only": (
                    not bad.empty
                    and bad["n_donors"].max() == g["n_donors"].min() < g["n_donors"].max()
                ),
            }
        )
    return pd.DataFrame(out)


def _setting_table(v: pd.DataFrame) -> list[str]:
    """Markdown table: type-I error at 0.05 per method (rows) and setting (columns), each
    marked ✓ (calibrated) or ✗ by the plain rule, and the corrected verdict where it differs."""
    cols = sorted({(r.n_donors, r.cells_per_donor) for r in v.itertuples()})
    head = "| method | " + " | ".join(f"{s} donors × {m} cells" for s, m in cols) + " |"
    out = [head, "|---" * (len(cols) + 1) + "|"]

    def mark(r) -> str:
        text = f"{percent(r.type1_005)} {'✓' if r.calibrated else '✗'}"
        if r.calibrated_corrected != r.calibrated:
            text += f" ({'✓' if r.calibrated_corrected else '✗'} corrected)"
        return text

    for m, g in v.groupby("method", sort=False):
        cell = {(r.n_donors, r.cells_per_donor): r for r in g.itertuples()}
        vals = [mark(cell[c]) if c in cell else "–" for c in cols]
        out.append(f"| {method_label(m)} | " + " | ".join(vals) + " |")
    return out


def power_by_method(summary: pd.DataFrame, fdr: float = 0.05) -> pd.DataFrame:
    """Mean TPR at matched observed FDR ``fdr`` per scenario and method, averaged over the
    settings of the scenario that every ranked method ran (each setting's replicate mean counts
    once). The R cell-level models, scored on a gene subset, are left out: their TPR rests on a
    few DE genes and is not comparable with whole-transcriptome methods."""
    col = f"tpr_matched_{fdr:g}"
    if summary is None or col not in summary.columns:
        return pd.DataFrame(columns=["scenario", "method", "tpr"])
    s = summary[~summary["method"].isin(SUBSET_METHODS) & summary[col].notna()]
    out = []
    settings = {}
    for sc, g in s.groupby("scenario", sort=False):
        per = g.groupby("method", sort=False)
        common = set.intersection(
            *(set(zip(d["n_donors"], d["cells_per_donor"], strict=True)) for _, d in per)
        )
        settings[sc] = sorted(common)
        for m, d in per:
            keep = [
                (a, b) in common for a, b in zip(d["n_donors"], d["cells_per_donor"], strict=True)
            ]
            out.append({"scenario": sc, "method": m, "tpr": float(d.loc[keep, col].mean())})
    table = pd.DataFrame(out, columns=["scenario", "method", "tpr"])
    table.attrs["settings"] = settings  # scenario → the (S, m) ranked over
    return table


def _best(power: pd.DataFrame, scenario: str, among=None) -> tuple[str | None, float]:
    p = power[power["scenario"] == scenario]
    if among is not None:
        p = p[p["method"].isin(among)]
    p = p[np.isfinite(p["tpr"].astype(float))]
    if p.empty:
        return None, np.nan
    r = p.loc[p["tpr"].idxmax()]
    return str(r["method"]), float(r["tpr"])


def _claims(sc: str, cal: pd.DataFrame, power: pd.DataFrame) -> list[str]:
    """Literature checks for one scenario (see the module docstring)."""
    c = cal.set_index("method")
    have = set(c.index)
    ok = {m: bool(c.loc[m, "calibrated"]) for m in have}
    lines = []
    pb = [m for m in PSEUDOBULK if m in have]
    naive = [m for m in CELLS_AS_REPLICATES if m in have]
    if pb and naive:
        pb_ok = [m for m in pb if ok[m]]
        naive_bad = [m for m in naive if not ok[m]]
        verdict = (
            "reproduced"
            if len(pb_ok) == len(pb) and len(naive_bad) == len(naive)
            else "partly reproduced"
            if pb_ok and naive_bad
            else "not reproduced"
        )
        text = (
            f"  - Squair 2021 / Crowell 2020 (pseudobulk calibrated, cells as replicates "
            f"inflated): **{verdict}**; calibrated pseudobulk: "
            f"{', '.join(method_label(m) for m in pb_ok) or 'none'}; inflated cell-level: "
            f"{', '.join(method_label(m) for m in naive_bad) or 'none'}."
        )
        pb_bad = [m for m in pb if not ok[m]]
        if pb_bad:
            few = all(bool(c.loc[m, "failed_few_donors_only"]) for m in pb_bad)
            text += (
                " Where pseudobulk fails: "
                + "; ".join(f"{method_label(m)} in {c.loc[m, 'failed_settings']}" for m in pb_bad)
                + "."
            )
            if few:
                text += (
                    " Only with the fewest donors: the dispersion of each gene is then "
                    "estimated from a handful of pseudobulks and the Wald or QL reference "
                    "distribution understates its uncertainty."
                )
        lines.append(text)
    tpr_mixed = _best(power, sc, [m for m in MIXED if m in have])
    tpr_pb = _best(power, sc, pb)
    if tpr_mixed[0] and tpr_pb[0]:
        pb_wins = tpr_pb[1] >= tpr_mixed[1]
        lines.append(
            f"  - Murphy & Skene 2022 (pseudobulk at least as powerful as mixed models) vs "
            f"Zimmerman 2021 (pseudobulk underpowered): best pseudobulk "
            f"{method_label(tpr_pb[0])} TPR {percent(tpr_pb[1])} at matched FDR 5%, best mixed "
            f"model {method_label(tpr_mixed[0])} {percent(tpr_mixed[1])}: "
            f"**{'Murphy & Skene' if pb_wins else 'Zimmerman'}** reproduced."
        )
    nbm = [m for m in NB_MIXED if m in have]
    if nbm:
        best_all = _best(power, sc, [m for m in have if ok.get(m)])
        ranked = (
            power[(power["scenario"] == sc) & power["method"].isin([m for m in have if ok.get(m)])]
            .sort_values("tpr", ascending=False)["method"]
            .tolist()
        )
        top = ranked[:3]
        hit = [m for m in nbm if ok[m] and m in top]
        lines.append(
            f"  - Gagnon 2022 (NB GLMM among the best): "
            f"**{'reproduced' if hit else 'not reproduced'}**; NB GLMM calibrated: "
            f"{', '.join(method_label(m) + (' yes' if ok[m] else ' no') for m in nbm)}"
            + (
                f"; most powerful calibrated method {method_label(best_all[0])}"
                if best_all[0]
                else ""
            )
            + "."
        )
    if LMM_DEFAULT in have:
        r = c.loc[LMM_DEFAULT]
        text = (
            f"  - FLASHMM (the LMM with a donor effect controls the type-I error): "
            f"**{'reproduced' if ok[LMM_DEFAULT] else 'not reproduced'}** "
            f"(type-I at 0.05: {percent(r['min_005'])}–{percent(r['max_005'])} over "
            f"{int(r['n_settings'])} settings)"
        )
        if not ok[LMM_DEFAULT]:
            text += f"; fails in {r['failed_settings']}"
            if bool(r["failed_few_donors_only"]):
                text += (
                    " — only with the fewest donors, where the donor variance is "
                    "estimated from a handful of donors and a few donors' effects can "
                    "line up with the arms"
                )
        lines.append(text + ".")
    return lines


def read_scenarios(results_dir: Path) -> list[str]:
    """The Markdown section on the scenario experiments (or a note that they are missing)."""
    type1 = summaries.load(results_dir, "scenario_null_type1.csv")
    if type1 is None:
        return [
            "*`scenario_null_type1.csv` is missing: run `python -m validation` "
            "(the scenario_null experiment).*"
        ]
    power = power_by_method(summaries.load(results_dir, "scenario_power_summary.csv"))
    verdicts = setting_verdicts(type1)
    cal = scenario_verdicts(verdicts)
    lines = [
        "Calibrated (✓) in a setting = the Wilson 95% interval of the type-I error reaches "
        "down to α at 0.05 and 0.01, and the counts of null p ≤ 10⁻³ and ≤ 10⁻⁴ are not above "
        "their Poisson 99% interval (rows pooled over the tested cell types and replicates, "
        "never over settings); calibrated in a scenario = in every setting. The verdicts and "
        "the claims use this rule. *Corrected*: with k the settings in which the method ran, "
        "the Wilson interval of level 1 − 0.05/k must lie above α and, with at least three "
        "replicates, so must the Student-t 95% interval over the replicates (each an "
        "independent data set), and the Poisson interval is of level 1 − 0.01/k: a setting "
        "marked ✗ but ✓ corrected fails within what k correlated tests give by chance (the "
        "tests of one data set share its design, and a gene's tests in different cell types "
        "share its donor effects, so the plain intervals are too narrow). Power is ranked over "
        "the settings every ranked method ran (listed per scenario), without the gene-subset R "
        "models.",
        "",
    ]
    for sc, g in cal.groupby("scenario", sort=False):
        good = [method_label(m) for m in g.loc[g["calibrated"], "method"]]
        bad = g[~g["calibrated"]]
        lines += [f"### {sc}", ""] + _setting_table(verdicts[verdicts["scenario"] == sc]) + [""]
        good_corr = [method_label(m) for m in g.loc[g["calibrated_corrected"], "method"]]
        lines.append(
            f"- Calibrated in all {int(g['n_settings'].max())} settings: "
            f"{', '.join(good) or 'none'}; corrected: {', '.join(good_corr) or 'none'}."
        )
        for r in bad.itertuples():
            where = "every setting" if r.n_calibrated == 0 else r.failed_settings
            lines.append(
                f"- {method_label(r.method)}: calibrated in {r.n_calibrated} of "
                f"{r.n_settings} settings ({r.n_calibrated_corrected} corrected; type-I at "
                f"0.05 {percent(r.min_005)}–{percent(r.max_005)}); fails in {where}."
            )
        best = _best(power, sc)
        best_cal = _best(power, sc, g.loc[g["calibrated"], "method"].tolist())
        if best[0]:
            lines.append(
                f"- Most powerful at matched observed FDR 5%: {method_label(best[0])} "
                f"(mean TPR {percent(best[1])}); among the calibrated: "
                f"{method_label(best_cal[0]) if best_cal[0] else 'none'}"
                f"{' (' + percent(best_cal[1]) + ')' if best_cal[0] else ''}; ranked over "
                + ", ".join(f"{a} × {b}" for a, b in power.attrs.get("settings", {}).get(sc, []))
                + " (donors × cells per donor)."
            )
        else:
            lines.append("- Power: no `scenario_power` results for this scenario.")
        if sc in SCENARIOS:
            lines.append(f"- The scenario: {SCENARIOS[sc].summary}.")
        lines.append("- Against the literature:")
        lines += _claims(sc, g, power)
        lines.append("")
    return lines
