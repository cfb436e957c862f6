import subprocess
import sys

from pyflashmm.cli import main


def test_reproduce_demo_prints_a_result_table(capsys, tmp_path):
    out = tmp_path / "demo.csv"
    assert main(["reproduce", "--demo", "--genes", "40", "--cells", "3000", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "log_fc" in text and "gene × cluster tests" in text
    import pandas as pd

    table = pd.read_csv(out)
    assert {"variable", "contrast", "log_fc", "se", "df", "p_value", "adj_p_value",
            "true_beta"} <= set(table.columns)  # fmt: skip
    assert (table["df"] < 3000 - 21).all()  # Satterthwaite, not FLASHMM's n − p
    assert len(table) == 40 * 10  # 40 genes × 10 cluster-specific treatment effects
    assert table["p_value"].between(0, 1).all()


def test_cli_help_and_usage_errors():
    run = subprocess.run(
        [sys.executable, "-m", "pyflashmm.cli", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "reproduce" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pyflashmm.cli", "nonsense"], capture_output=True, text=True
    )
    assert bad.returncode == 2
