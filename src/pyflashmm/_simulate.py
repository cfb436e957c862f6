r"""Simulated multi-subject, multi-cell-type scRNA-seq counts: FLASHMM's ``simuRNAseq`` model.

Notation (cells c, genes g, subjects s, clusters k; natural-log scale throughout)
-------------------------------------------------------------------------------
Reference (cells × genes counts ``R``, n_ref cells):

* μ_g = mean of column g, v_g = unbiased variance, size_g = μ_g² / (v_g − μ_g) (method of
  moments; ``ref_mean_dispersion`` holds (μ_g, size_g) of every reference gene). Genes with
  μ_g ≤ 0 or v_g ≤ μ_g are dropped; the rest are resampled to ``n_genes`` (with replacement
  when there are too few).
* Without a reference, FLASHMM's synthetic one: R_cg ~ NB(1 + Pois(1), size 1 + Pois(1)),
  i.i.d. over cells, with the gene's (mean, size) drawn once per gene.
* L_c = Σ_g R_cg, the library size of reference cell c (its mean for every cell when
  ``adjust_library_size=False``); metadata (``sam``, ``cls``, ``trt``) belongs to reference cells,
  and (metadata, L) rows are resampled to ``n_cells`` (with replacement when too few).

Simulated counts, for the cell c of subject s(c), cluster k(c), arm t(c):

.. math::

    \log \mu_{gc} = \log \mu_g + b_{g,s(c)} + u_{g,s(c),k(c)}
                    + \beta_g\,[g \in DE_{k(c)},\ t(c) = \text{treated}]
                    + (\log L_c - \overline{\log L}),

    b_{gs} \sim N(0, \sigma_b^2), \quad u_{gsk} \sim N(0, \sigma_u^2), \quad
    y_{cg} \sim NB(\mu_{gc}, \text{size}_g), \quad Var\,y = \mu + \mu^2/\text{size}.

σ_b² = ``var_random_effects`` (one effect per gene and subject, shared by all the subject's
cells in every cluster and arm), σ_u² = ``var_subject_cluster`` (0 in FLASHMM). DE genes are
the *last* ``n_de_genes`` simulated genes; each is DE in one cluster k (counts per cluster
~ Multinomial(n_de_genes, p_de_genes_type)), with |β_g| ~ U(min_beta, max_beta) and a random
sign under ``direction="both"``. The mean log library size is taken over the simulated cells.

Variables: ``mu``/``size`` = μ_g/size_g, ``random_effects`` = b (subjects × genes),
``libsize`` = L_c, ``beta`` = β_g. Counts are built in Numba (``_kernels/simulate.py``), in
cell blocks with their own seeds, as a CSR matrix whose size is O(nnz), or written a wave of
blocks at a time to an AnnData store (``out=``; ``_simulate_store.py``) with the same counts.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pyflashmm._jit import num_threads, numba_parallel_only
from pyflashmm._kernels import simulate as _ks
from pyflashmm._simulate_store import CountsStore, check_out, remove_store

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["SimulatedData", "simulate_rnaseq"]

#: cells per parallel block; the output depends on it (not on the number of threads)
BLOCK_CELLS = 4096
#: entries (12 bytes each) of the scratch buffers of the blocks drawn at once; blocks are
#: drawn into them and then moved to the CSR arrays, so peak memory is the output plus these
SCRATCH_ENTRIES = 1 << 22
#: outputs expected to be at least this dense (and blocks whose rows × genes int32 buffer
#: is at most ``DENSE_BUFFER_BYTES``) are drawn into dense per-block buffers, then compressed
DENSE_BUFFER_SHARE = 0.25
DENSE_BUFFER_BYTES = 1 << 22
#: shared per-gene survival tables for the dense lookups: grid spacing, entries per table,
#: memory budget (the spacing doubles until they fit) and the most genes that get them. With
#: the guides a lookup is cheap: a spacing of 0.02 rather than 0.01 leaves ~2 % of the cells
#: undecided instead of ~1 %, but halves the tables to build (vignette case: same sampling
#: time, fine_tables 7.9 -> 4.1 ms CPU)
FINE_GRID = 0.02
FINE_WIDTH = 32
assert FINE_WIDTH < _ks.NO_GUIDE, "fine-table guides are uint8 counts"
FINE_BYTES = 1 << 24
FINE_MAX_GENES = 2048


@dataclass(frozen=True)
class SimulatedData:
    """Result of :func:`simulate_rnaseq`.

    Attributes
    ----------
    counts : scipy.sparse.csr_matrix
        Cells × genes integer counts (int32; int64 indices only when nnz ≥ 2³¹).
    obs : pandas.DataFrame
        One row per cell (index ``Cell1``..): ``sam``, ``cls``, ``trt`` (categorical),
        ``libsize`` (float, L_c) and ``ref_cell`` (row of the reference cell it was drawn from).
    var : pandas.DataFrame
        One row per simulated gene (index = gene names, see ``ref_gene``): true ``mu`` and
        ``size`` (NB size; ``dispersion`` in FLASHMM), ``ref_gene`` (reference name),
        ``ref_index``, ``de`` (bool), ``beta`` (0 for non-DE genes) and ``cluster``.
    de_genes : pandas.DataFrame
        ``gene``, ``beta`` (natural-log fold change in treated cells of ``cluster``),
        ``cluster``; FLASHMM's ``DEgenes``.
    ref_mean_dispersion : pandas.DataFrame
        ``mu`` and ``dispersion`` (NB size, method of moments) of every reference gene, index =
        reference gene names (genes later dropped included, as in FLASHMM).
    treatment : str
        The treated arm.
    random_effects : pandas.DataFrame
        b_gs, subjects × genes.
    random_effects_subject_cluster : pandas.DataFrame or None
        u_gsk, (subject, cluster) pairs × genes, when ``var_subject_cluster > 0``.
    path : pathlib.Path or None
        The store the counts were written to (``simulate_rnaseq(..., out=path)``); then
        ``counts`` is None and everything else is held as usual.
    """

    counts: sp.csr_matrix | None
    obs: pd.DataFrame
    var: pd.DataFrame
    de_genes: pd.DataFrame
    ref_mean_dispersion: pd.DataFrame
    treatment: str
    random_effects: pd.DataFrame
    random_effects_subject_cluster: pd.DataFrame | None = None
    path: Path | None = None

    @property
    def gene_names(self) -> pd.Index:
        """Names of the simulated genes (columns of ``counts``)."""
        return self.var.index

    def to_anndata(self) -> anndata.AnnData:
        """An :class:`anndata.AnnData` (X = counts, obs, var; truth in ``uns``/``varm``).

        For a result written to a store (``counts`` is None), X is None: read the store with
        ``anndata.read_zarr`` / ``anndata.read_h5ad`` (or backed) for the counts.
        """
        import anndata

        uns: dict[str, Any] = {
            "de_genes": self.de_genes.reset_index(drop=True),
            "ref_mean_dispersion": self.ref_mean_dispersion,
            "treatment": self.treatment,
            "subjects": np.asarray(self.random_effects.index, dtype=str),
        }
        varm = {"random_effects": np.ascontiguousarray(self.random_effects.to_numpy().T)}
        if self.random_effects_subject_cluster is not None:
            re2 = self.random_effects_subject_cluster
            varm["random_effects_subject_cluster"] = np.ascontiguousarray(re2.to_numpy().T)
            uns["subject_cluster"] = np.asarray(re2.index, dtype=str)
        var = self.var.copy()
        var["cluster"] = var["cluster"].fillna("").astype(str)
        return anndata.AnnData(X=self.counts, obs=self.obs, var=var, uns=uns, varm=varm)

    def write_h5ad(self, path, **kwargs) -> None:
        """Write :meth:`to_anndata` to ``path`` (keyword arguments go to ``AnnData.write_h5ad``).

        Raises
        ------
        ValueError
            The counts are not held (they were written to :attr:`path`).
        """
        if self.counts is None:
            raise ValueError(
                f"the counts were written to {str(self.path)!r} and are not held; "
                "read or copy that store instead"
            )
        self.to_anndata().write_h5ad(path, **kwargs)


# ----------------------------------------------------------------------------------------------
# input handling


def _as_reference(counts) -> tuple[sp.csr_matrix, Any, Any, Any, tuple]:
    """Reference counts as CSR (cells × genes), cell names, gene names, attached obs, stats."""
    cell_names = gene_names = obs = None
    if hasattr(counts, "obs") and hasattr(counts, "X") and hasattr(counts, "var_names"):
        cell_names, gene_names, obs = counts.obs_names, counts.var_names, counts.obs
        counts = counts.X
    elif isinstance(counts, pd.DataFrame):
        cell_names, gene_names = counts.index, counts.columns
        counts = counts.to_numpy()
    if sp.issparse(counts):
        R = sp.csr_matrix(counts)
    else:
        arr = np.asarray(counts)
        if arr.ndim != 2:
            raise ValueError(f"counts must be a 2-D cells × genes matrix, got shape {arr.shape}")
        R = sp.csr_matrix(arr)
    if R.shape[0] < 2 or R.shape[1] < 1:
        raise ValueError(f"counts needs at least 2 cells and 1 gene, got shape {R.shape}")
    data = R.data
    if data.dtype.kind not in "biuf":
        raise ValueError(f"counts must be numeric, got dtype {data.dtype}")
    stats = _reference_stats(R)
    return R, cell_names, gene_names, obs, stats


def _unique_names(names: Sequence[str]) -> list[str]:
    """Make names unique by appending ``-1``, ``-2``, ... to repeats (first one unchanged)."""
    seen: dict[str, int] = {}
    used = set(names)
    out = []
    for name in names:
        if name not in seen:
            seen[name] = 0
            out.append(name)
            continue
        k = seen[name]
        while True:
            k += 1
            cand = f"{name}-{k}"
            if cand not in used:
                break
        seen[name] = k
        used.add(cand)
        out.append(cand)
    return out


def _numbered_names(prefix: str, n: int) -> np.ndarray:
    """``prefix1`` .. ``prefix{n}`` as an object array of str.

    The decimal digits (repeating patterns over the numbers with d digits) are written with
    numpy into one ASCII buffer that is decoded and split once: about 2.5 times as fast as
    formatting ``n`` integers in Python.
    """
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    # (numbers with d digits, bytes per name and newline) for d = 1, 2, ...
    digits = range(1, len(str(max(n, 1))) + 1)
    shapes = [(min(10**d - 1, n) - 10 ** (d - 1) + 1, head.size + d + 1) for d in digits]
    buf = np.empty(sum(m * w for m, w in shapes), dtype=np.uint8)
    at = 0
    for d, (m, w) in enumerate(shapes, start=1):
        rows = buf[at : at + m * w].reshape(m, w)
        rows[:, : head.size] = head
        for k in range(d):  # digit k from the right of 10^(d-1) + i: a repeating pattern
            first = 1 if k == d - 1 else 0
            run = np.repeat(np.arange(48 + first, 58, dtype=np.uint8), 10**k)
            rows[:, head.size + d - 1 - k] = np.tile(run, -(-m // run.size))[:m]
        rows[:, -1] = 10  # "\n"
        at += m * w
    names = str(memoryview(buf)[:-1], "ascii").split("\n")
    return np.fromiter(names, dtype=object, count=n)


def _random_metadata(n, n_samples, n_clusters, n_treatments, samples_nested, rng):
    """FLASHMM's random metadata for ``n`` reference cells (codes + labels)."""
    labels_trt = np.array(list(string.ascii_uppercase[:n_treatments]))
    sam = rng.integers(1, n_samples + 1, size=n)
    cls = rng.integers(1, n_clusters + 1, size=n)
    trt = rng.integers(0, n_treatments, size=n)
    if samples_nested:
        # subjects split over arms by Multinomial(n_samples, equal); redrawn while an arm gets
        # none (FLASHMM's sample.int fails there)
        while True:
            split = rng.multinomial(n_samples, np.full(n_treatments, 1.0 / n_treatments))
            if (split > 0).all():
                break
        sam_labels = np.empty(n, dtype=object)
        # arms in order of first appearance (R's unique())
        _, first = np.unique(trt, return_index=True)
        for k, arm in enumerate(trt[np.sort(first)]):
            idx = np.flatnonzero(trt == arm)
            draw = rng.integers(1, split[k] + 1, size=idx.size)
            sam_labels[idx] = np.char.add(labels_trt[arm], draw.astype(str))
    else:
        sam_labels = np.char.add("S", sam.astype(str)).astype(object)
    return pd.DataFrame(
        {"sam": sam_labels.astype(str), "cls": cls.astype(str), "trt": labels_trt[trt]}
    )


def _check_metadata(metadata, n_ref, cell_names) -> pd.DataFrame:
    if not isinstance(metadata, pd.DataFrame):
        raise TypeError(f"metadata must be a pandas DataFrame, got {type(metadata).__name__}")
    missing = [c for c in ("sam", "cls", "trt") if c not in metadata.columns]
    if missing:
        raise ValueError(f"metadata lacks column(s) {missing}; it needs 'sam', 'cls' and 'trt'")
    if len(metadata) != n_ref:
        raise ValueError(
            f"metadata has {len(metadata)} rows but the reference counts have {n_ref} cells"
        )
    if cell_names is not None and not isinstance(metadata.index, pd.RangeIndex):
        if not np.array_equal(np.asarray(metadata.index, dtype=str), np.asarray(cell_names, str)):
            raise ValueError("metadata rows do not match the reference cells (index differs)")
    cols, fast = {}, True
    for c in ("sam", "cls", "trt"):
        labels = _str_categorical(metadata[c])
        if labels is None:
            labels = np.asarray(metadata[c].astype(str), dtype=str)
            fast = False
        cols[c] = labels
    out = pd.DataFrame(cols)
    if not fast and out.isna().any().any():
        raise ValueError("metadata columns 'sam', 'cls', 'trt' must not contain missing values")
    return out


def _str_categorical(col: pd.Series) -> pd.Categorical | None:
    """A categorical column with str categories and no missing values as it is (its labels are
    already str: no ``col.astype(str)``, and it is factorised by its codes), else None."""
    if not isinstance(col.dtype, pd.CategoricalDtype):
        return None
    cat = col.array
    if not all(type(x) is str for x in cat.categories) or (cat.codes < 0).any():
        return None
    return cat


def _check_direction(direction, min_beta, max_beta, null):
    if direction not in ("both", "up", "down"):
        raise ValueError(f"direction must be 'both', 'up' or 'down', got {direction!r}")
    if not np.isfinite(min_beta) or not np.isfinite(max_beta):
        raise ValueError("min_beta and max_beta must be finite")
    if null:
        return
    if not min_beta < max_beta:
        raise ValueError(f"min_beta ({min_beta}) must be smaller than max_beta ({max_beta})")
    if direction == "both" and not min_beta * max_beta > 0:
        raise ValueError(
            "direction='both' needs min_beta and max_beta of the same sign "
            f"(got {min_beta}, {max_beta})"
        )
    if direction == "up" and not min_beta > 0:
        raise ValueError(f"direction='up' needs min_beta > 0, got {min_beta}")
    if direction == "down" and not max_beta < 0:
        raise ValueError(f"direction='down' needs max_beta < 0, got {max_beta}")


def _block_seeds(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """(n_blocks, 4) uint64 xoshiro states from ``SeedSequence.spawn`` children."""
    entropy = rng.integers(0, 2**63, size=4, dtype=np.int64)
    root = np.random.SeedSequence([int(e) for e in entropy])
    seeds = np.empty((max(n_blocks, 1), 4), dtype=np.uint64)
    for b, child in enumerate(root.spawn(max(n_blocks, 1))):
        seeds[b] = child.generate_state(4, dtype=np.uint64)
        if not seeds[b].any():  # an all-zero xoshiro state is a fixed point
            seeds[b, 0] = np.uint64(1)
    return seeds


# ----------------------------------------------------------------------------------------------
# the sampler


def _fine_tables(M, size, cell_f, de_mult, enabled):
    """Shared survival tables of each gene on the grid j ``FINE_GRID`` over its range of means
    (with and without its fold change ``de_mult``; spacing widened to fit ``FINE_BYTES``);
    ``enabled=False`` (or None and too many genes) gives none. They only speed up the lookups:
    the output does not depend on them."""
    G = M.shape[0]
    if enabled is None:
        enabled = G <= FINE_MAX_GENES
    if not enabled or cell_f.size == 0:
        none = (np.empty((0, FINE_WIDTH)), np.empty((0, _ks.FINE_BUCKETS), np.uint8))
        return *none, np.zeros(G + 1, np.int64), np.zeros(G, np.int64), 1.0
    lo = M.min(axis=1) * cell_f.min()
    hi = M.max(axis=1) * cell_f.max()
    lo = np.minimum(np.minimum(lo, lo * de_mult), _ks.MU_BIG)
    hi = np.minimum(np.maximum(hi, hi * de_mult), _ks.MU_BIG)
    fine = FINE_GRID
    rows = FINE_BYTES // (8 * FINE_WIDTH)
    while True:
        j0 = np.floor(lo / fine).astype(np.int64)
        npts = np.floor(hi / fine).astype(np.int64) + 2 - j0
        if npts.sum() <= rows:
            break
        fine *= 2.0
    fptr = np.concatenate(([0], np.cumsum(npts))).astype(np.int64)
    return *_ks.fine_tables(size, fptr, j0, fine, FINE_WIDTH), fptr, j0, fine


def _simulate_counts(
    M: np.ndarray,
    size: np.ndarray,
    cell_h: np.ndarray,
    cell_f: np.ndarray,
    rng: np.random.Generator,
    *,
    cell_cls: np.ndarray | None = None,
    cell_treated: np.ndarray | None = None,
    de_cls: np.ndarray | None = None,
    de_mult: np.ndarray | None = None,
    block_cells: int = BLOCK_CELLS,
    scratch_entries: int = SCRATCH_ENTRIES,
    slot_capacity: int | None = None,
    output_capacity: int | None = None,
    dense_buffer: bool | None = None,
    fine_grid: bool | None = None,
    sink=None,
    wave_blocks: int | None = None,
) -> sp.csr_matrix | None:
    """NB counts y_cg ~ NB(M[g, h_c] f_c (× de_mult[g] in DE cells), size_g) as CSR.

    ``M`` is genes × groups; DE gene g (``de_cls[g] >= 0``) gets the factor ``de_mult[g]`` in
    cells with ``cell_treated`` and ``cell_cls == de_cls[g]``. ``scratch_entries`` bounds the
    buffers of the blocks drawn at once; ``slot_capacity`` and ``output_capacity`` (tests) set
    the first sizes of a block's buffer and of the CSR arrays. ``dense_buffer`` (default: when
    the output is expected to be dense and a block's rows × genes buffer is small) draws each
    block into a dense buffer that is then compressed straight into the CSR arrays, instead of
    the scratch buffers of non-zeros. None of them changes the output (the draws are the same).

    With ``sink``, nothing is returned: each wave of blocks (``wave_blocks`` at most, default
    as many as the scratch budget allows) is handed over as ``sink(r0, r1, ends, indices,
    data)`` for cells ``r0:r1``, in order, where ``ends[i]`` counts the wave's non-zeros up to
    the end of cell ``r0 + i`` (``ends`` is a view: copy what is kept). Memory is then
    O(cells + one wave), and the counts are those of the in-memory result (block b is drawn from
    ``seeds[b]`` alone, whatever the wave it is in).
    """
    G = M.shape[0]
    n = cell_h.shape[0]
    M = np.ascontiguousarray(M, dtype=np.float64)
    size = np.ascontiguousarray(size, dtype=np.float64)
    cell_h = np.ascontiguousarray(cell_h, dtype=np.int64)
    cell_f = np.ascontiguousarray(cell_f, dtype=np.float64)
    cell_cls = np.zeros(n, np.int64) if cell_cls is None else np.asarray(cell_cls, np.int64)
    cell_treated = (
        np.zeros(n, np.uint8) if cell_treated is None else np.asarray(cell_treated, np.uint8)
    )
    de_cls = np.full(G, -1, np.int64) if de_cls is None else np.asarray(de_cls, np.int64)
    de_mult = np.ones(G) if de_mult is None else np.asarray(de_mult, np.float64)

    n_blocks = max(-(-n // block_cells), 1)
    block_ptr = np.minimum(np.arange(n_blocks + 1, dtype=np.int64) * block_cells, n)
    # perm = lexsort((cell_f, cell_h, block)), and the runs of one group inside a block
    perm, run_ptr, run_lo, run_hi, run_h = _ks.sort_cells(
        np.argsort(cell_f), cell_f, cell_h, block_cells
    )
    fs = cell_f[perm]
    seeds = _block_seeds(rng, n_blocks)

    # expected non-zeros (Jensen: P(y > 0) is concave in the mean, so this is a slight over-
    # estimate without DE): sizes the scratch buffers and the first allocation of the output
    n_h = np.bincount(cell_h, minlength=M.shape[1]).astype(np.float64)
    f_h = np.bincount(cell_h, weights=cell_f, minlength=M.shape[1]) / np.maximum(n_h, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pnz = -np.expm1(-size[:, None] * np.log1p(M * f_h[None, :] / size[:, None]))
    est = float((np.nan_to_num(pnz, nan=1.0) * n_h).sum()) if n else 0.0  # no BLAS threads
    per_block = est / max(n, 1) * min(block_cells, max(n, 1))
    cap = slot_capacity or int(1.2 * per_block + 1024)
    threads = num_threads()
    rows = min(block_cells, max(n, 1))
    if dense_buffer is None:
        dense_buffer = est >= DENSE_BUFFER_SHARE * n * G and rows * G * 4 <= DENSE_BUFFER_BYTES
    if dense_buffer:
        # dense buffers: as many blocks per wave as fit in the scratch budget (fewer waves)
        slots = int(min(n_blocks, max(2 * threads, 4 * scratch_entries // (rows * G * 4), 1)))
        dbuf = np.empty((slots, rows * G), dtype=np.uint16)  # counts above 65535: see below
        pinv = np.empty(n, dtype=np.int64)
        pinv[perm] = np.arange(n, dtype=np.int64)
        cap = 1
    else:
        slots = int(min(n_blocks, max(2 * threads, 1), max(scratch_entries // cap, 1)))
        dbuf = np.empty((1, 1), dtype=np.uint16)
    if wave_blocks is not None:
        slots = max(1, min(slots, int(wave_blocks)))
    srow, sgene, sval = _scratch_buffers(slots, cap)
    used = np.zeros(slots, dtype=np.int64)
    clipped = np.zeros(slots, dtype=np.uint8)
    cnt = np.zeros(n, dtype=np.int64)

    if sink is not None:
        # only one wave's output is allocated at a time (in ``_wave_to_sink``)
        capacity, idx_dtype = 0, np.int32
    else:
        capacity = output_capacity or int(1.05 * est + 8.0 * np.sqrt(est) + 1024)
        idx_dtype = np.int32 if max(capacity, n, G) < 2**31 - 1 else np.int64
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(capacity, dtype=idx_dtype)
    data = np.empty(capacity, dtype=np.int32)
    total = 0
    fine = _fine_tables(M, size, cell_f, np.where(de_cls >= 0, de_mult, 1.0), fine_grid)
    fixed = (block_ptr, perm, fs, cell_cls, cell_treated, run_ptr, run_lo, run_hi, run_h)
    for w0 in range(0, n_blocks, slots):
        blocks = np.arange(w0, min(w0 + slots, n_blocks), dtype=np.int64)
        k = blocks.size
        while True:
            _ks.sample_blocks(
                blocks, seeds, *fixed, M, size, de_cls, de_mult, cnt, srow, sgene, sval, used,
                dbuf, clipped, dense_buffer, *fine,
            )  # fmt: skip
            if dense_buffer and clipped[:k].any():
                # a count above 65535 (the dense buffers are uint16): this wave and the later
                # ones are drawn again from the same seeds into the scratch buffers
                dense_buffer = False
                dbuf = np.empty((1, 1), dtype=np.uint16)
                cap = slot_capacity or int(1.2 * per_block + 1024)
                srow = sgene = sval = None
                srow, sgene, sval = _scratch_buffers(slots, cap)
                continue
            need = int(used[:k].max())
            if dense_buffer or need <= cap:
                break
            # a buffer overflowed: replay the wave from the same seeds with larger buffers
            cap = int(1.25 * need)
            srow = sgene = sval = None
            srow, sgene, sval = _scratch_buffers(slots, cap)
        if sink is not None:
            _wave_to_sink(sink, blocks, block_ptr, used, cnt, srow, sgene, sval, dense_buffer,
                          dbuf, G, pinv if dense_buffer else None, indptr)  # fmt: skip
            continue
        base = total + np.concatenate(([0], np.cumsum(used[: k - 1])))
        total += int(used[:k].sum())
        if total > capacity:  # realloc: large blocks are remapped, not copied
            capacity = int(max(total, 1.2 * capacity))
            indices.resize(capacity, refcheck=False)
            data.resize(capacity, refcheck=False)
        if dense_buffer:
            _ks.emit_dense(blocks, block_ptr, base, used, dbuf, G, pinv, indptr, indices, data)
        else:
            _ks.scatter_blocks(
                blocks, block_ptr, base, cnt, srow, sgene, sval, used, indptr, indices, data
            )
    del srow, sgene, sval, dbuf
    if sink is not None:
        return None
    indices.resize(total, refcheck=False)
    data.resize(total, refcheck=False)
    if total >= 2**31 - 1 and indices.dtype != np.int64:
        indices = indices.astype(np.int64)
    indptr = indptr.astype(indices.dtype, copy=False)
    # indices and indptr share one dtype, so the constructor keeps the arrays (no copy)
    return sp.csr_matrix((data, indices, indptr), shape=(n, G), copy=False)


def _wave_to_sink(sink, blocks, block_ptr, used, cnt, srow, sgene, sval, dense, dbuf, G, pinv,
                  indptr) -> None:  # fmt: skip
    """Compress one wave of blocks into fresh CSR arrays and hand them to ``sink``."""
    k = blocks.size
    base = np.concatenate(([0], np.cumsum(used[: k - 1])))
    nnz = int(used[:k].sum())
    indices = np.empty(nnz, dtype=np.int32)
    data = np.empty(nnz, dtype=np.int32)
    if dense:
        _ks.emit_dense(blocks, block_ptr, base, used, dbuf, G, pinv, indptr, indices, data)
    else:
        _ks.scatter_blocks(
            blocks, block_ptr, base, cnt, srow, sgene, sval, used, indptr, indices, data
        )
    r0 = int(block_ptr[blocks[0]])
    r1 = int(block_ptr[blocks[-1] + 1])
    sink(r0, r1, indptr[r0 + 1 : r1 + 1], indices, data)


def _synthetic_reference_stats(mu0, size0, n_cells, rng, wave_blocks=None):
    """Column sums, column sums of squares and row sums of FLASHMM's synthetic reference
    (NB(mu0_g, size0_g) counts, ``n_cells`` × genes), drawn wave by wave and never held whole.

    The statistics are those of the whole matrix: the sums are of integers in float64, exact
    below 2^53, so adding them up per wave changes nothing.
    """
    G = mu0.shape[0]
    colsum = np.zeros(G)
    colsq = np.zeros(G)
    rowsum = np.zeros(n_cells)

    def add(r0, r1, ends, indices, data):
        indptr = np.empty(r1 - r0 + 1, dtype=np.int64)
        indptr[0] = 0
        indptr[1:] = ends
        cs, cq, rs, _ = _ks.reference_stats(indptr, indices, data, G, True)
        colsum[:] += cs
        colsq[:] += cq
        rowsum[r0:r1] = rs

    _simulate_counts(
        mu0[:, None], size0, np.zeros(n_cells, np.int64), np.ones(n_cells), rng, sink=add,
        wave_blocks=wave_blocks,
    )  # fmt: skip
    return colsum, colsq, rowsum


def _scratch_buffers(slots: int, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slot scratch buffers of ``cap`` non-zeros: row in the block, gene, value (int32)."""
    return tuple(np.empty((slots, cap), dtype=np.int32) for _ in range(3))


def _reference_stats(R: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column sums, column sums of squares and row sums; raises on a bad entry."""
    indptr = np.ascontiguousarray(R.indptr)
    indices = np.ascontiguousarray(R.indices)
    data = np.ascontiguousarray(R.data)
    if data.dtype.kind == "b":
        data = data.view(np.uint8)
    integral = data.dtype.kind in "iu"
    colsum, colsq, rowsum, bad = _ks.reference_stats(indptr, indices, data, R.shape[1], integral)
    if bad >= 0:
        row = int(np.searchsorted(indptr, bad, side="right") - 1)
        raise ValueError(
            "counts must be non-negative integers; first bad entry at "
            f"(cell {row}, gene {int(indices[bad])}): {data[bad]!r}"
        )
    return colsum, colsq, rowsum


def _mme(colsum: np.ndarray, colsq: np.ndarray, n: int):
    """Column mean, unbiased variance and MME size (NaN/negative where v <= mu)."""
    mu = colsum / n
    v = colsq / (n - 1) - n * mu**2 / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        size = mu**2 / (v - mu)
    return mu, v, size


def _factor(values: pd.Series, csel: np.ndarray, *, first_seen: bool) -> tuple[np.ndarray, list]:
    """Codes (int64) and labels of ``values[csel]``: labels present in the selection, sorted
    (``first_seen=False``) or in order of first appearance."""
    codes_ref, uniq = pd.factorize(values)
    codes = codes_ref[csel]
    if first_seen:
        order = pd.unique(codes)
    else:
        present = np.flatnonzero(np.bincount(codes, minlength=len(uniq)))
        order = present[np.argsort(np.asarray(uniq, dtype=str)[present], kind="stable")]
    remap = np.full(len(uniq), -1, dtype=np.int64)
    remap[order] = np.arange(order.size)
    return remap[codes], [str(uniq[i]) for i in order]


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    raise TypeError(
        f"rng must be None, an int, a SeedSequence or a Generator, got {type(rng).__name__}"
    )


def _cluster_vector(value, clusters: list[str], name: str) -> np.ndarray:
    """A per-cluster vector from a mapping (by label) or a sequence (sorted cluster order)."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if str(k) not in clusters]
        if unknown:
            raise ValueError(f"{name} names unknown cluster(s) {unknown}; clusters: {clusters}")
        lookup = {str(k): v for k, v in value.items()}
        return np.array([lookup.get(k, 0) for k in clusters], dtype=np.float64)
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size != len(clusters):
        raise ValueError(
            f"{name} has length {arr.size} but there are {len(clusters)} clusters {clusters}"
        )
    return arr


@numba_parallel_only
def simulate_rnaseq(
    counts=None,
    *,
    n_genes: int | None = None,
    n_cells: int | None = None,
    metadata: pd.DataFrame | None = None,
    samples_nested: bool = True,
    n_samples: int = 25,
    n_clusters: int = 10,
    n_treatments: int = 2,
    treatment: str | None = None,
    n_de_genes: int | None = None,
    n_de_genes_per_type: Mapping[str, int] | Sequence[int] | None = None,
    p_de_genes_type: Sequence[float] | None = None,
    adjust_library_size: bool = True,
    direction: str = "both",
    min_beta: float = 0.25,
    max_beta: float = 1.0,
    var_random_effects: float = 0.1,
    var_subject_cluster: float = 0.0,
    libsize_cluster_scale: Mapping[str, float] | Sequence[float] | None = None,
    null: bool = False,
    rng=None,
    out=None,
    overwrite: bool = False,
    write_cells: int | None = None,
) -> SimulatedData:
    """Simulate multi-subject, multi-cell-type scRNA-seq counts (FLASHMM's ``simuRNAseq``).

    The model is stated in the module docstring. Defaults are FLASHMM's (v1.3.0).

    Parameters
    ----------
    counts : array-like, scipy.sparse matrix, pandas.DataFrame or AnnData, optional
        Reference counts, **cells × genes** (FLASHMM takes genes × cells), non-negative
        integers. Gene/cell names come from DataFrame labels or AnnData ``var_names`` /
        ``obs_names``. If None, FLASHMM's synthetic reference of ``n_cells`` × ``n_genes``
        (μ_g = 1 + Pois(1), size_g = 1 + Pois(1)).
    n_genes, n_cells : int, optional
        Simulated genes and cells. ``n_cells`` defaults to the reference's cells. ``n_genes``
        defaults to the reference genes that pass the moment filter, kept in reference order
        with their names (stable gene names, FLASHMM issue #9); otherwise genes are resampled.
        Both are required without ``counts``.
    metadata : pandas.DataFrame, optional
        One row per reference cell with columns ``sam``, ``cls``, ``trt``. If None it is drawn
        at random (uniform subjects ``S1..``, clusters ``"1".."n_clusters"``, arms ``A, B, ..``).
    samples_nested : bool
        With random metadata: each subject belongs to one arm (labels ``A3``, ``B7``; the
        ``n_samples`` subjects are split over arms by Multinomial(n_samples, equal), redrawn
        while an arm gets none). False: subjects ``S1..`` are seen in every arm.
    n_samples, n_clusters, n_treatments : int
        Sizes of the random metadata. ``n_clusters`` is also the default ``n_de_genes``.
    treatment : str, optional
        The treated arm; default the last label in sorted order.
    n_de_genes : int, optional
        Number of DE genes (default ``n_clusters``), split over clusters by
        Multinomial(n_de_genes, p_de_genes_type).
    n_de_genes_per_type : mapping or sequence, optional
        DE genes per cluster (mapping by cluster label, or a sequence in sorted cluster order);
        overrides ``n_de_genes``.
    p_de_genes_type : sequence of float, optional
        Cluster probabilities for the split (sorted cluster order; default equal).
    adjust_library_size : bool
        If True, L_c is the reference cell's total count; otherwise the same for all cells.
    direction : {"both", "up", "down"}
        Sign of the DE effects. "both": random sign, needs min_beta·max_beta > 0; "up": needs
        min_beta > 0; "down": needs max_beta < 0 (β ~ U(min_beta, max_beta)).
    min_beta, max_beta : float
        Bounds of |β| (natural-log fold change).
    var_random_effects : float
        σ_b², variance of the per-(gene, subject) random effect.
    var_subject_cluster : float
        σ_u², variance of an extra per-(gene, subject, cluster) random effect (not in FLASHMM).
    libsize_cluster_scale : mapping or sequence, optional
        Multiplies L_c of cells of each cluster (cluster-specific library-size distributions;
        not in FLASHMM). Mapping by label (missing clusters keep 1) or sorted-order sequence.
    null : bool
        If True, no DE genes at all (calibration data); β arguments are then not checked.
    rng : None, int, numpy.random.SeedSequence or numpy.random.Generator
        Source of all randomness. Results are identical for any number of Numba threads.
    out : str or os.PathLike, optional
        Write the result to this AnnData store instead of returning the counts: a ``.zarr``
        directory or an ``.h5ad`` file, laid out as ``SimulatedData.to_anndata()`` written by
        anndata (X = CSR counts, obs, var, truth in uns/varm). Cells are drawn and written a
        few blocks at a time, so memory is O(cells + genes × cells per write), never that of
        the whole matrix (a synthetic reference is reduced to its moments the same way). The
        counts are the same as without ``out`` for the same ``rng``. An existing store is
        replaced only with ``overwrite=True``; a store left incomplete by an error is removed.
    overwrite : bool
        Replace an existing ``out``.
    write_cells : int, optional
        With ``out``: cells drawn and written per step, rounded up to whole blocks of
        ``BLOCK_CELLS`` (4,096) cells; default as many as a fixed scratch budget allows (at
        least one block per thread). Memory grows with it; the counts do not depend on it.

    Returns
    -------
    SimulatedData
        Counts (cells × genes CSR), ``obs``, ``var`` (true parameters), ``de_genes``,
        ``ref_mean_dispersion``, ``treatment``, random effects. With ``out``, ``counts`` is
        None and ``path`` is the store.

    Raises
    ------
    ValueError
        Inconsistent β bounds/direction, bad reference counts, metadata without
        ``sam``/``cls``/``trt`` or not matching the reference cells, ``n_samples`` below
        ``n_treatments``, unknown ``treatment``, too many DE genes; ``out`` without a
        ``.zarr``/``.h5ad`` suffix, in a folder that does not exist, or existing without
        ``overwrite=True``.
    """
    _check_direction(direction, min_beta, max_beta, null)
    out_path = None if out is None else check_out(out, overwrite)
    wave_blocks = None
    if write_cells is not None:
        if int(write_cells) != write_cells or write_cells < 1:
            raise ValueError(f"write_cells must be a positive integer, got {write_cells}")
        wave_blocks = -(-int(write_cells) // BLOCK_CELLS)
    rng = _as_rng(rng)
    for name, val in (
        ("var_random_effects", var_random_effects),
        ("var_subject_cluster", var_subject_cluster),
    ):
        if not (np.isfinite(val) and val >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {val}")
    for name, val in (
        ("n_samples", n_samples),
        ("n_clusters", n_clusters),
        ("n_treatments", n_treatments),
    ):
        if int(val) != val or val < 1:
            raise ValueError(f"{name} must be a positive integer, got {val}")
    if metadata is None and n_samples < n_treatments and samples_nested:
        raise ValueError(
            f"n_samples ({n_samples}) must be at least n_treatments ({n_treatments}) "
            "for nested samples"
        )
    if n_treatments > 26:
        raise ValueError(f"n_treatments must be at most 26, got {n_treatments}")
    for name, val in (("n_genes", n_genes), ("n_cells", n_cells)):
        if val is not None and (int(val) != val or val < 1):
            raise ValueError(f"{name} must be a positive integer, got {val}")

    # --- reference counts
    if counts is None:
        if n_genes is None or n_cells is None:
            raise ValueError("n_genes and n_cells are required when counts is None")
        mu0 = 1.0 + rng.poisson(1.0, size=n_genes)
        size0 = 1.0 + rng.poisson(1.0, size=n_genes)
        # only the reference's moments and library sizes are used: they are taken wave by wave
        stats = _synthetic_reference_stats(mu0, size0, n_cells, rng, wave_blocks)
        n_ref, G_ref = n_cells, n_genes
        cell_names = None
        ref_gene_names = pd.Index(_numbered_names("Gene", n_genes), dtype=object, copy=False)
        attached_obs = None
    else:
        R, cell_names, ref_gene_names, attached_obs, stats = _as_reference(counts)
        n_ref, G_ref = R.shape
        del R
        if ref_gene_names is None:
            ref_gene_names = pd.Index(_numbered_names("Gene", G_ref), dtype=object, copy=False)
        else:
            ref_gene_names = pd.Index(_unique_names([str(x) for x in ref_gene_names]))
    if n_cells is None:
        n_cells = n_ref

    # --- reference metadata
    if (
        metadata is None
        and attached_obs is not None
        and {"sam", "cls", "trt"} <= set(attached_obs.columns)
    ):
        metadata = attached_obs
    if metadata is None:
        meta = _random_metadata(n_ref, n_samples, n_clusters, n_treatments, samples_nested, rng)
    else:
        meta = _check_metadata(metadata, n_ref, cell_names)
    if treatment is not None and str(treatment) not in set(meta["trt"].unique()):
        raise ValueError(f"treatment {treatment!r} is not a level of metadata['trt']")

    # --- library sizes of the reference cells
    libsize = stats[2]
    if not adjust_library_size:
        libsize = np.full(n_ref, libsize.mean())
    if np.any(libsize <= 0):
        raise ValueError(
            f"counts has cells with zero total count (first: cell {int(np.argmax(libsize <= 0))})"
            "; their log library size is undefined"
        )

    # --- means and dispersions (method of moments)
    mu_ref, v_ref, size_ref = _mme(stats[0], stats[1], n_ref)
    ref_md = pd.DataFrame({"mu": mu_ref, "dispersion": size_ref}, index=ref_gene_names)
    keep = np.flatnonzero((mu_ref > 0) & (v_ref > mu_ref))
    if keep.size == 0:
        raise ValueError("counts has no gene with mean > 0 and variance > mean")
    if n_genes is None:
        n_genes = keep.size
        gsel = keep
    elif keep.size == n_genes:
        gsel = keep
    else:
        gsel = rng.choice(keep, size=n_genes, replace=keep.size < n_genes)
    mu = mu_ref[gsel]
    size = size_ref[gsel]
    ref_names = np.asarray(ref_gene_names)[gsel].astype(str)
    gene_names = pd.Index(_unique_names(list(ref_names)))

    # --- cells
    if n_ref != n_cells:
        csel = rng.choice(n_ref, size=n_cells, replace=n_ref < n_cells)
    else:
        csel = np.arange(n_ref)
    # labels are factorised on the reference cells, then only codes are resampled
    cls_code, clusters = _factor(meta["cls"], csel, first_seen=False)
    cls_cat = pd.Categorical.from_codes(cls_code, categories=clusters)
    lib = libsize[csel]
    if libsize_cluster_scale is not None:
        scale = _cluster_vector(libsize_cluster_scale, clusters, "libsize_cluster_scale")
        if isinstance(libsize_cluster_scale, Mapping):
            given = {str(k) for k in libsize_cluster_scale}
            scale = np.where([k in given for k in clusters], scale, 1.0)
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError("libsize_cluster_scale must be positive and finite")
        lib = lib * scale[cls_code]
    trt_code, arms = _factor(meta["trt"], csel, first_seen=False)
    if treatment is None:
        treatment = arms[-1]
    treatment = str(treatment)
    treated = trt_code == arms.index(treatment) if treatment in arms else np.zeros(n_cells, bool)

    # --- DE genes
    if null:
        n_de_type = np.zeros(len(clusters), dtype=np.int64)
    elif n_de_genes_per_type is not None:
        n_de_type = _cluster_vector(n_de_genes_per_type, clusters, "n_de_genes_per_type")
        if np.any(n_de_type < 0) or np.any(n_de_type != np.floor(n_de_type)):
            raise ValueError("n_de_genes_per_type must hold non-negative integers")
        n_de_type = n_de_type.astype(np.int64)
    else:
        n_de = n_clusters if n_de_genes is None else n_de_genes
        if int(n_de) != n_de or n_de < 0:
            raise ValueError(f"n_de_genes must be a non-negative integer, got {n_de}")
        if p_de_genes_type is None:
            p = np.full(len(clusters), 1.0 / len(clusters))
        else:
            p = np.asarray(p_de_genes_type, dtype=np.float64).ravel()
            if p.size != len(clusters):
                raise ValueError(
                    f"p_de_genes_type has length {p.size} but there are {len(clusters)} clusters"
                )
            if np.any(~np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
                raise ValueError("p_de_genes_type must be non-negative with a positive sum")
            p = p / p.sum()
        n_de_type = rng.multinomial(int(n_de), p).astype(np.int64)
    n_de = int(n_de_type.sum())
    if n_de > n_genes:
        raise ValueError(f"n_de_genes ({n_de}) exceeds n_genes ({n_genes})")
    beta = np.zeros(n_genes)
    de_cls = np.full(n_genes, -1, dtype=np.int64)
    if n_de:
        b = rng.uniform(min_beta, max_beta, size=n_de)
        if direction == "both":
            b = (2 * rng.binomial(1, 0.5, size=n_de) - 1) * b
        beta[n_genes - n_de :] = b
        de_cls[n_genes - n_de :] = np.repeat(np.arange(len(clusters)), n_de_type)
    is_de = de_cls >= 0
    gene_cluster = np.where(is_de, np.asarray(clusters, dtype=object)[np.maximum(de_cls, 0)], None)

    # --- random effects and group means
    sam_code, subjects = _factor(meta["sam"], csel, first_seen=True)
    sam_cat = pd.Categorical.from_codes(sam_code, categories=subjects)
    S = len(subjects)
    b_sg = rng.normal(0.0, np.sqrt(var_random_effects), size=(S, n_genes))
    re2 = None
    if var_subject_cluster > 0:
        K = len(clusters)
        u = rng.normal(0.0, np.sqrt(var_subject_cluster), size=(S * K, n_genes))
        cell_h = sam_code * K + cls_code
        log_m = np.log(mu)[:, None] + np.repeat(b_sg, K, axis=0).T + u.T
        pair_names = [f"{s}:{k}" for s in subjects for k in clusters]
        re2 = pd.DataFrame(u, index=pair_names, columns=gene_names)
    else:
        cell_h = sam_code
        log_m = np.log(mu)[:, None] + b_sg.T
    M = np.exp(log_m)
    loglib = np.log(lib)
    cell_f = np.exp(loglib - loglib.mean())

    count_args = (M, size, cell_h, cell_f, rng)
    count_kwargs = {
        "cell_cls": cls_code,
        "cell_treated": treated.astype(np.uint8),
        "de_cls": de_cls,
        "de_mult": np.exp(beta),
    }
    Y = None if out_path is not None else _simulate_counts(*count_args, **count_kwargs)

    obs = pd.DataFrame(
        {
            "sam": sam_cat,
            "cls": cls_cat,
            "trt": pd.Categorical.from_codes(trt_code, categories=arms),
            "libsize": lib,
            "ref_cell": csel.astype(np.int64),
        },
        index=pd.Index(_numbered_names("Cell", n_cells), dtype=object, copy=False),
    )
    var = pd.DataFrame(
        {
            "ref_gene": ref_names,
            "ref_index": gsel.astype(np.int64),
            "mu": mu,
            "size": size,
            "de": is_de,
            "beta": beta,
            "cluster": gene_cluster,
        },
        index=gene_names,
    )
    de_genes = pd.DataFrame(
        {
            "gene": np.asarray(gene_names)[is_de],
            "beta": beta[is_de],
            "cluster": gene_cluster[is_de].astype(str),
        }
    )
    sim = SimulatedData(
        counts=Y,
        obs=obs,
        var=var,
        de_genes=de_genes,
        ref_mean_dispersion=ref_md,
        treatment=treatment,
        random_effects=pd.DataFrame(b_sg, index=subjects, columns=gene_names),
        random_effects_subject_cluster=re2,
    )
    if out_path is None:
        return sim
    sim = replace(sim, path=out_path)
    store = None
    try:
        store = CountsStore(out_path, sim.to_anndata())
        _simulate_counts(*count_args, **count_kwargs, sink=store.append, wave_blocks=wave_blocks)
        store.close()
    except BaseException:
        if store is not None:
            store.close_quietly()
        remove_store(out_path)
        raise
    return sim
