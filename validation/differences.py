"""Paired differences between pyflashmm and a reference: the numbers of the agreement tables.

For a pair (o, r) of our value and the reference value, with a scale floor f ≥ 0,

    δ_rel = |o − r| / max(|r|, f),        δ_abs = |o − r|.

The floor keeps a value near 0 from being judged on its own vanishing size. It is a number or
one number per pair (for example a coefficient's standard error: β̂ ≈ 0 is then judged in units
of the precision with which it is estimated). Pairs where either value is NaN (a gene not
fitted or not tested by one side) are dropped; ``n_values`` counts the pairs kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: the columns of one summary row, in order (see validation/README.md)
SUMMARY_COLUMNS = ("n_values", "max_rel_diff", "median_rel_diff", "max_abs_diff")


def relative_difference(ours, ref, floor) -> np.ndarray:
    """δ_rel = |ours − ref| / max(|ref|, floor), element-wise (NaN where either is NaN).

    Parameters
    ----------
    ours, ref : array_like, same shape
        Our values and the reference values.
    floor : float or array_like broadcastable to ``ref``
        The smallest scale a difference is judged on; must be ≥ 0. Where both |ref| and
        ``floor`` are 0 the result is 0 for equal values and inf otherwise.
    """
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"ours and ref: shapes differ, {ours.shape} vs {ref.shape}")
    floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), ref.shape)
    if (floor < 0).any() or np.isnan(floor).any():
        raise ValueError("floor: must be >= 0 and not NaN")
    diff = np.abs(ours - ref)
    scale = np.maximum(np.abs(ref), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / scale)
    return np.where(np.isnan(ours) | np.isnan(ref), np.nan, rel)


def summarise(ours, ref, floor) -> dict[str, float]:
    """``n_values``, ``max_rel_diff``, ``median_rel_diff`` and ``max_abs_diff`` of the pairs.

    Pairs with a NaN on either side are dropped; with no pairs left the statistics are NaN.
    """
    rel = relative_difference(ours, ref, floor).ravel()
    diff = np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(ref, dtype=np.float64)).ravel()
    keep = ~np.isnan(rel)
    if not keep.any():
        return {"n_values": 0, "max_rel_diff": np.nan, "median_rel_diff": np.nan,
                "max_abs_diff": np.nan}  # fmt: skip
    return {
        "n_values": int(keep.sum()),
        "max_rel_diff": float(rel[keep].max()),
        "median_rel_diff": float(np.median(rel[keep])),
        "max_abs_diff": float(diff[keep].max()),
    }


class PairedValues:
    """Pairs of one scenario gathered gene by gene, per quantity, before they are summarised."""

    def __init__(self) -> None:
        self._parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def put(self, quantity: str, ours, ref, floor) -> None:
        """Add pairs of ``quantity`` (``floor`` broadcast to the shape of ``ref``)."""
        o = np.asarray(ours, dtype=np.float64).ravel()
        r = np.asarray(ref, dtype=np.float64).ravel()
        f = np.broadcast_to(np.asarray(floor, dtype=np.float64), r.shape)
        self._parts.setdefault(quantity, []).append((o, r, f))

    def items(self):
        """``(quantity, ours, ref, floor)`` with each quantity's pairs concatenated."""
        for quantity, parts in self._parts.items():
            o, r, f = (np.concatenate(x) for x in zip(*parts, strict=True))
            yield quantity, o, r, f


class AgreementTables:
    """Collects the rows of ``agreement_summary.csv`` and ``agreement_values.csv.gz``.

    Each :meth:`add` call compares one quantity of one scenario: it appends one summary row
    (the scenario's descriptors, the quantity and :func:`summarise`) and the paired values.
    """

    def __init__(self) -> None:
        self._summary: list[dict] = []
        self._values: list[pd.DataFrame] = []

    def add(self, comparison: str, scenario: dict, quantity: str, ours, ref, floor) -> None:
        """Add one comparison; ``scenario`` holds ``scenario``, ``K``, ``fit_method``,
        ``n_subjects``, ``n_cells`` and ``balanced``."""
        ours = np.asarray(ours, dtype=np.float64).ravel()
        ref = np.asarray(ref, dtype=np.float64).ravel()
        floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), np.shape(ref))
        row = {"comparison": comparison, **scenario, "quantity": quantity}
        self._summary.append({**row, **summarise(ours, ref, floor)})
        self._values.append(pd.DataFrame({"comparison": comparison,
                                          "scenario": scenario["scenario"],
                                          "quantity": quantity, "ours": ours,
                                          "reference": ref}))  # fmt: skip

    def add_pairs(self, comparison: str, scenario: dict, pairs: PairedValues) -> None:
        """:meth:`add` every quantity of ``pairs``."""
        for quantity, o, r, f in pairs.items():
            self.add(comparison, scenario, quantity, o, r, f)

    def extend(self, other: AgreementTables) -> None:
        """Append the rows collected by ``other`` (e.g. in a worker process)."""
        self._summary += other._summary
        self._values += other._values

    def summary(self) -> pd.DataFrame:
        """The summary table, one row per comparison × scenario × quantity."""
        return pd.DataFrame(self._summary)

    def values(self) -> pd.DataFrame:
        """The paired values behind the summary, one row per pair."""
        cols = ["comparison", "scenario", "quantity", "ours", "reference"]
        if not self._values:
            return pd.DataFrame(columns=cols)
        return pd.concat(self._values, ignore_index=True)[cols]
