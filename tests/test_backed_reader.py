"""The one-process reader of a backed .h5ad's CSR rows: the blocks anndata would return."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyflashmm import _distributed as _dist


@pytest.fixture(params=[np.int32, np.int64], ids=["int32-indices", "int64-indices"])
def backed(request, tmp_path, rng):
    counts = sp.random(900, 57, density=0.2, format="csr", random_state=np.random.default_rng(1))
    counts.data = rng.integers(1, 30, counts.nnz).astype(np.float32)
    counts = sp.diags((np.arange(900) // 50 != 2).astype(np.float32)) @ counts  # rows 100:150
    counts.eliminate_zeros()  # empty
    counts.indices = counts.indices.astype(request.param)
    counts.indptr = counts.indptr.astype(np.int64)
    obs = pd.DataFrame({"donor_id": [f"HC-{i % 6:03d}" for i in range(900)]},
                       index=[f"cell{i}" for i in range(900)])  # fmt: skip
    path = tmp_path / "pbmc.h5ad"
    ad.AnnData(X=counts, obs=obs).write_h5ad(path)
    a = ad.read_h5ad(path, backed="r")
    yield a, counts
    a.file.close()


def test_reused_reader_gives_anndatas_blocks(backed):
    a, counts = backed
    rows = _dist.RowReader(a.X)
    assert rows._h5 is not None  # the h5py path is the one tested
    # growing, shrinking, empty, all-empty-rows and a short last chunk
    for start, stop in [(0, 64), (64, 400), (400, 410), (100, 150), (410, 410), (410, 900),
                        (880, 900)]:  # fmt: skip
        block = _dist.read_block(rows, start, stop, "X")
        ref = a.X[start:stop]
        assert block.shape == ref.shape and block.format == "csr"
        assert (block != ref).nnz == 0 and (block != counts[start:stop]).nnz == 0
        assert block.dtype == counts.dtype


def test_one_shot_reads_are_independent_and_exact(backed):
    a, counts = backed
    first = _dist.read_chunk(a.X, 0, 300, "X")
    second = _dist.read_chunk(a.X, 300, 900, "X")
    assert (first != counts[:300]).nnz == 0 and (second != counts[300:]).nnz == 0
    base = first.data.base if first.data.base is not None else first.data
    assert base.size == first.nnz  # no room left over in a block the caller keeps
