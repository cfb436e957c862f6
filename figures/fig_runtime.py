"""Runtime scaling on log–log axes, one column per scaling axis (cells, genes, subjects).

Top row: wall-clock seconds (median over repeats) against the varied size, one line per tool
with status ``ok``; bottom row (only when some memory was measured): peak memory in MB
(values of 0 MB, below the measurement resolution, are not drawn). Tools that were skipped
(e.g. R not installed) are absent from the panels and listed, with the reason, in a note
under the figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures import style
from figures.tables import read_table

INPUTS = ["runtime.csv"]
OUTPUTS = ["fig_runtime"]

#: scaling axis → (the column varied along it, x label)
AXES = {
    "cells": ("n_cells", "number of cells"),
    "genes": ("n_genes", "number of genes"),
    "subjects": ("n_subjects", "number of subjects"),
}
_ROWS = [("seconds", "time (s)"), ("peak_mem_mb", "peak memory (MB)\n(R tools: whole R process)")]


def _fixed(d, col: str) -> str:
    others = [c for c, _ in AXES.values() if c != col]
    parts = []
    for c in others:
        vals = d[c].unique()
        name = c.removeprefix("n_")
        parts.append(f"{vals[0]:g} {name}" if len(vals) == 1 else f"{name} varies")
    return ", ".join(parts)


def _skipped_note(df) -> str:
    skipped = df[df["status"] != "ok"]
    ok = set(df.loc[df["status"] == "ok", "tool"])
    lines = []
    for tool in style.ordered(skipped["tool"].unique(), style.TOOL_LABELS):
        if tool in ok:
            continue
        notes = skipped.loc[skipped["tool"] == tool, "note"].dropna().unique()
        lines.append(f"{style.tool_label(tool)}: {notes[0] if len(notes) else 'no reason given'}")
    return "Not run: " + "; ".join(lines) if lines else ""


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw ``fig_runtime`` from ``runtime.csv`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    ok = df[df["status"] == "ok"]
    axes_present = [a for a in AXES if a in set(df["axis"])]
    tools = style.ordered(ok["tool"].unique(), style.TOOL_LABELS)
    nc = max(len(axes_present), 1)
    rows = _ROWS if (ok["peak_mem_mb"] > 0).any() else _ROWS[:1]
    fig, axes = plt.subplots(len(rows), nc, figsize=(3.0 * nc + 0.4, 2.7 * len(rows)),
                             squeeze=False, layout="constrained")  # fmt: skip
    handles: dict = {}
    for c, axis in enumerate(axes_present):
        col, xlabel = AXES[axis]
        d_axis = ok[ok["axis"] == axis]
        for r, (ycol, ylabel) in enumerate(rows):
            ax = axes[r, c]
            drawn = False
            for i, t in enumerate(tools):
                d = d_axis[(d_axis["tool"] == t) & (d_axis[ycol] > 0)].sort_values(col)
                if d.empty:
                    continue
                (h,) = ax.plot(d[col], d[ycol], color=style.tool_color(t),
                               marker=style.MARKERS[i % 8], ms=3.5, lw=1)  # fmt: skip
                handles.setdefault(t, h)
                drawn = True
            if not drawn:
                style.empty_panel(ax, "no memory above 0 MB" if r else "no timings")
                continue
            ax.set_xscale("log")
            ax.set_yscale("log")
            xs = np.sort(d_axis[col].unique())
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.xaxis.set_minor_locator(plt.NullLocator())
            ax.yaxis.set_minor_formatter(plt.NullFormatter())
            ax.grid(color="0.92", lw=0.6, which="major")
            ax.set_xlabel(xlabel)
            if r == 0:
                ax.set_title(f"varying {axis}\n({_fixed(d_axis, col)})")
            if c == 0:
                ax.set_ylabel(ylabel)
    if not axes_present:
        style.empty_panel(axes[0, 0], "no runtime results")
    style.figure_legend(fig, [handles[t] for t in tools if t in handles],
                        [style.tool_label(t) for t in tools if t in handles],
                        ncol=2 if nc == 1 else 4)  # fmt: skip
    note = _skipped_note(df)
    if note:
        fig.text(0.01, -0.01, note, ha="left", va="top", fontsize=7, wrap=True)
    return style.save(fig, figures_dir, OUTPUTS[0])
