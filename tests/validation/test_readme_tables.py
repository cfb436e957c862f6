"""The README's validation tables are what the committed results generate."""

from pathlib import Path

import pandas as pd

from validation import readme_tables
from validation.provenance import REPO_ROOT


def test_committed_readme_matches_committed_results():
    text = readme_tables.README.read_text()
    assert "<!-- generated:six-methods -->" in text and "<!-- generated:scenarios -->" in text
    assert readme_tables.render(text, REPO_ROOT / "validation" / "results") == text, (
        "README.md's generated tables differ from validation/results: run "
        "`python -m validation.readme_tables`"
    )


def test_render_rewrites_only_the_blocks(tmp_path: Path):
    t1 = pd.DataFrame(
        {"method": ["lmm_satterthwaite"] * 2, "alpha": [0.05, 0.05], "n_tests": [100, 300],
         "n_rejected": [4, 24], "type1_error": [0.04, 0.08], "n_subjects": [6, 20],
         "var_random_effects": [0.1, 0.1], "cells_per_subject": [50, 50]}
    )  # fmt: skip
    t1.to_csv(tmp_path / "calibration_type1.csv", index=False)
    text = "before\n<!-- generated:six-methods -->\nold\n<!-- /generated:six-methods -->\nafter\n"
    out = readme_tables.render(text, tmp_path)
    assert out.startswith("before\n") and out.endswith("after\n") and "old" not in out
    # pooled over settings: (4 + 24) / (100 + 300) = 7.0%, range 4.0%–8.0%
    assert "| 7.0% (4.0%–8.0%) | – |" in out
