"""Runtime scaling on log–log axes, one column per scaling axis (cells, genes, donors).

Rows, each drawn only when it has data:

* wall-clock seconds (median over repeats) against the varied size, one line per tool with
  status ``ok``. Filled markers are measured on every gene; **open markers on dotted segments
  are extrapolated**: timed on a subset of the genes and scaled linearly to all of them (the
  ``extrapolated`` column when the table has one, else read from ``note``: "timed on k genes,
  scaled to G" or "k genes scaled to G" with k < G);
* Python tools: the peak RSS *increase* during the call (MB; values under
  :data:`MEM_FLOOR` MB, a few memory pages, are drawn on the floor of the axis);
* R tools: the peak RSS of the *whole R process* (R, its packages and data; MB, linear axis
  from 0). These are not comparable with the Python increments, hence their own row. Tools
  that ran in one R process share one value (said under the figure).

Tools that were skipped (e.g. R not installed) are absent from the panels and listed, with the
reason, in a note under the figure. Donors are the ``n_subjects`` of the table.
"""

from __future__ import annotations

import re
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
    "subjects": ("n_subjects", style.DONORS_LABEL),
}
#: Python memory increases below this (MB) are at the resolution of the measurement
MEM_FLOOR = 0.1
_ROWS = (
    ("seconds", "time (s)"),
    ("py_mem", "Python: peak RSS increase\nduring the call (MB)"),
    ("r_mem", "R: peak RSS of the\nwhole R process (MB, linear)"),
)
_SCALED = re.compile(r"(\d+) genes,? scaled to (\d+)")


def extrapolated(df) -> np.ndarray:
    """Whether each row's time was scaled up from a subset of the genes."""
    if "extrapolated" in df.columns:
        return df["extrapolated"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    out = []
    for note in df["note"].fillna("").astype(str):
        m = _SCALED.search(note)
        out.append(bool(m) and int(m.group(1)) < int(m.group(2)))
    return np.array(out, dtype=bool)


def is_r_tool(df) -> np.ndarray:
    """Whether each row's memory is that of a whole R process."""
    notes = df["note"].fillna("").astype(str).str.contains("R process")
    return (df["tool"].isin(style.R_TOOLS) | notes).to_numpy()


def _fixed(d, col: str) -> str:
    others = [c for c, _ in AXES.values() if c != col]
    parts = []
    for c in others:
        vals = d[c].unique()
        name = "donors" if c == "n_subjects" else c.removeprefix("n_")
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


def _shared_note(ok) -> str:
    """R tools whose memory series coincide (one R process ran them) or nearly do (lines that
    hide each other)."""
    r = ok[ok["r_tool"]]
    series = {t: g.sort_values(["axis", "n_cells", "n_genes", "n_subjects"])["peak_mem_mb"]
              .to_numpy(dtype=float) for t, g in r.groupby("tool")}  # fmt: skip
    names = style.ordered(series, style.TOOL_LABELS)
    same, close = [], []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = series[a], series[b]
            if x.shape != y.shape:
                continue
            pair = f"{style.tool_label(a)} and {style.tool_label(b)}"
            if np.array_equal(x, y):
                same.append(pair)
            elif np.allclose(x, y, rtol=0.01):
                close.append(pair)
    parts = [f"{p} ran in one R process (one value)" for p in same]
    parts += [f"{p} agree within 1% (their lines overlap)" for p in close]
    return ("R memory: " + "; ".join(parts) + ".") if parts else ""


def _line(ax, d, col, ycol, tool, floor) -> None:
    kw = style.tool_style(tool)
    x = d[col].to_numpy(dtype=float)
    y = d[ycol].to_numpy(dtype=float)
    if floor:
        y = np.maximum(y, floor)
    ext = d["extrapolated"].to_numpy(dtype=bool)
    for i in range(len(x) - 1):
        dotted = ext[i] or ext[i + 1]
        ax.plot(x[i : i + 2], y[i : i + 2], color=kw["color"], lw=kw["lw"],
                ls=":" if dotted else kw["ls"])  # fmt: skip
    if (~ext).any():
        ax.plot(x[~ext], y[~ext], ls="none", marker=kw["marker"], ms=kw["ms"], color=kw["color"],
                mec=kw["color"], zorder=3)  # fmt: skip
    if ext.any():
        ax.plot(x[ext], y[ext], ls="none", marker=kw["marker"], ms=kw["ms"] + 0.5, mfc="white",
                mec=kw["color"], mew=0.9, zorder=3)  # fmt: skip


def figure(df):
    """The runtime figure of a ``runtime.csv`` table."""
    ok = df[df["status"] == "ok"].copy()
    ok["extrapolated"] = extrapolated(ok)
    ok["r_tool"] = is_r_tool(ok)
    axes_present = [a for a in AXES if a in set(ok["axis"])]
    tools = style.ordered(ok["tool"].unique(), style.TOOL_LABELS)
    mem = ok["peak_mem_mb"].fillna(0) > 0
    rows = [_ROWS[0]]
    if (mem & ~ok["r_tool"]).any():
        rows.append(_ROWS[1])
    if (mem & ok["r_tool"]).any():
        rows.append(_ROWS[2])
    nc = max(len(axes_present), 1)
    fig, axes = style.panel_grid(lambda r, c: True, len(rows), nc,
                                 width=min(2.3, (style.PAGE_WIDTH - 0.6) / nc),
                                 height=1.9)  # fmt: skip
    handles: dict = {}
    for c, axis in enumerate(axes_present):
        col, xlabel = AXES[axis]
        d_axis = ok[ok["axis"] == axis]
        for r, (kind, ylabel) in enumerate(rows):
            ax = axes[r, c]
            if kind == "seconds":
                sel, ycol, floor = d_axis, "seconds", 0.0
            else:
                sel = d_axis[d_axis["r_tool"] == (kind == "r_mem")]
                sel = sel[sel["peak_mem_mb"] > 0]
                ycol, floor = "peak_mem_mb", (MEM_FLOOR if kind == "py_mem" else 0.0)
                sel = sel.assign(extrapolated=False)
            for t in tools:
                d = sel[sel["tool"] == t].sort_values(col)
                if d.empty:
                    continue
                _line(ax, d, col, ycol, t, floor)
                handles.setdefault(t, plt.Line2D([], [], **style.tool_style(t)))
            ax.set_xscale("log")
            if kind == "r_mem":
                ax.set_ylim(0, max(float(sel["peak_mem_mb"].max()), 1.0) * 1.1)
            else:
                ax.set_yscale("log")
            xs = np.sort(d_axis[col].unique())
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.xaxis.set_minor_locator(plt.NullLocator())
            ax.yaxis.set_minor_formatter(plt.NullFormatter())
            if kind == "py_mem":
                lo, hi = ax.get_ylim()
                ax.set_ylim(MEM_FLOOR / 1.6, max(hi, MEM_FLOOR * 10))
                ticks = [t for t in ax.get_yticks() if MEM_FLOOR <= t <= ax.get_ylim()[1]]
                ax.set_yticks(ticks, [f"≤{t:g}" if t == MEM_FLOOR else f"{t:g}" for t in ticks])
                if (sel["peak_mem_mb"] <= MEM_FLOOR).all():
                    ax.text(0.5, 0.5, f"every increase ≤ {MEM_FLOOR:g} MB\n(at the resolution)",
                            transform=ax.transAxes, ha="center", va="center", fontsize=6.5,
                            color="0.35")  # fmt: skip
            ax.grid(color="0.92", lw=0.6, which="major")
            if r == len(rows) - 1:
                ax.set_xlabel(xlabel)
            if r == 0:
                ax.set_title(f"varying {'donors' if axis == 'subjects' else axis}\n"
                             f"({_fixed(d_axis, col)})")  # fmt: skip
            if c == 0:
                ax.set_ylabel(ylabel)
    if not axes_present:
        style.empty_panel(axes[0, 0], "no runtime results")
    else:
        style.panel_letters(axes)
    measured = plt.Line2D([], [], marker="o", color="0.3", ms=3.5)
    scaled = plt.Line2D([], [], marker="o", ls=":", color="0.3", mfc="white", ms=4)
    style.figure_legend(fig, [handles[t] for t in tools if t in handles] + [measured, scaled],
                        [style.tool_label(t) for t in tools if t in handles]
                        + ["measured on all genes", "timed on a gene subset, scaled linearly"],
                        ncol=3)  # fmt: skip
    notes = [n for n in (_shared_note(ok), _skipped_note(df)) if n]
    if notes:
        fig.text(0.01, -0.01, "\n".join(notes), ha="left", va="top", fontsize=6.5, wrap=True)
    return fig


def make(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw ``fig_runtime`` from ``runtime.csv`` (the ``make`` of
    the :mod:`figures` package)."""
    style.setup()
    df = read_table(Path(results_dir) / INPUTS[0])
    return style.save(figure(df), figures_dir, OUTPUTS[0])
