"""Figures of the validation suite, drawn from the result tables only.

Each ``fig_*.py`` module defines ``INPUTS`` (the tables it reads), ``OUTPUTS`` (figure base
names) and

``make(results_dir: Path, figures_dir: Path) -> list[Path]``
    reads its ``INPUTS`` from ``results_dir``, writes every figure of ``OUTPUTS`` to
    ``figures_dir`` as PNG and PDF (``style.save``) and returns the files written.

``style`` holds the names, the palette and the shared helpers; ``tables.read_table`` reads a
results table. Nothing here imports ``validation`` (which imports ``figures`` to draw them).
"""
