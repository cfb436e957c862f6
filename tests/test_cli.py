import subprocess
import sys


def test_cli_help_and_usage_errors():
    run = subprocess.run(
        [sys.executable, "-m", "pyflashmm.cli", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "simulate" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pyflashmm.cli", "nonsense"], capture_output=True, text=True
    )
    assert bad.returncode == 2
