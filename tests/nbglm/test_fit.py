"""``nbglm`` (``_nbglm.fit``): input errors, the preset, the fields of the fit, sparse input."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from nbsim import gene_names, three_arm, two_group

from pyflashmm import NbGlmFit, nbglm


def test_bad_input(rng):
    Y, X = two_group(rng)
    with pytest.raises(ValueError, match="negative"):
        nbglm(-Y, X)
    with pytest.raises(ValueError, match="non-integer"):
        nbglm(Y + 0.5, X)
    Yn = Y.copy()
    Yn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nbglm(Yn, X)
    with pytest.raises(ValueError, match="full column rank"):
        nbglm(Y, np.column_stack([X, X[:, 1]]))
    with pytest.raises(ValueError, match="size_factors has length"):
        nbglm(Y, X, size_factors=np.ones(3))
    with pytest.raises(ValueError, match="size_factors must be"):
        nbglm(Y, X, size_factors=np.r_[0.0, np.ones(Y.shape[0] - 1)])
    with pytest.raises(ValueError, match="X must have shape"):
        nbglm(Y, X[:-1])


def test_rank_error_names_the_aliased_column(rng):
    Y, X = three_arm(rng)
    X["stim_or_IFN"] = X["conditionstim"] + X["conditionIFN"]
    with pytest.raises(ValueError, match="'stim_or_IFN'"):
        nbglm(Y, X)


def test_string_counts_are_rejected(rng):
    Y, X = two_group(rng, m=16, G=20)
    with pytest.raises(TypeError, match="counts must hold real numbers"):
        nbglm(Y.astype(int).astype(str), X)
    frame = pd.DataFrame(Y.astype(int).astype(str), columns=gene_names(20))
    with pytest.raises(TypeError, match="counts must hold real numbers"):
        nbglm(frame, X)


def test_on_disk_counts_are_rejected_with_a_pointer_to_de(rng, tmp_path):
    import h5py

    Y, X = two_group(rng, m=16, G=20)
    with h5py.File(tmp_path / "counts.h5", "w") as fh:
        fh["X"] = Y
        with pytest.raises(TypeError, match=r"counts must be .* held in memory.*pyflashmm\.de"):
            nbglm(fh["X"], X)


def test_samples_without_counts_are_named(rng):
    Y, X = two_group(rng, m=20, G=50)
    Y[[17, 3, 9]] = 0.0
    msg = r"counts: 3 samples \(rows\) have no counts at all \(first: row 3\); remove them"
    with pytest.raises(ValueError, match=msg):
        nbglm(Y, X)
    with pytest.raises(ValueError, match=msg):
        nbglm(sp.csr_matrix(Y), X, preset="single_cell")


def test_a_single_gene_is_refused_with_the_reason(rng):
    Y, X = two_group(rng, m=16, G=3)
    Y[:, 1:] = 0.0
    with pytest.raises(ValueError, match="dispersion trend across genes.*at least 2"):
        nbglm(Y, X)
    with pytest.raises(ValueError, match="every gene is all-zero"):
        nbglm(np.zeros_like(Y), X, size_factors=np.ones(16))


@pytest.mark.parametrize("G", [2, 3, 4, 5])
def test_few_genes_give_a_result_or_a_clear_error(G):
    rng = np.random.default_rng(7)
    Y, X = two_group(rng, m=16, G=G)
    for test in ("wald", "lrt"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fit = nbglm(Y, X, test=test, gene_names=gene_names(G))
        except ValueError as exc:
            assert "trend" in str(exc)
            continue
        assert fit.p_value.shape == (G,)


def test_preset_only_sets_what_the_caller_left_unset(rng):
    Y, X = two_group(rng, m=30, G=60)
    sc = nbglm(Y, X, preset="single_cell")
    assert sc.test == "lrt"
    assert sc.data.minmu == 1e-6
    wald = nbglm(Y, X, preset="single_cell", test="wald")
    assert wald.test == "wald" and wald.df == np.inf
    ratio = nbglm(Y, X, preset="single_cell", size_factors="ratio", minmu=0.5, test="wald")
    plain = nbglm(Y, X, min_replicates_for_replace=np.inf)
    np.testing.assert_array_equal(ratio.size_factors, plain.size_factors)
    np.testing.assert_array_equal(ratio.p_value, plain.p_value)
    # min_replicates_for_replace given: outliers are replaced despite the preset
    Yo = Y.copy()
    Yo[0, :10] = 5000.0
    kept = nbglm(Yo, X, preset="single_cell", min_replicates_for_replace=7)
    assert kept.replaced[:10].any()
    assert not nbglm(Yo, X, preset="single_cell").replaced.any()
    with pytest.raises(ValueError, match="preset"):
        nbglm(Y, X, preset="bulk")


def test_sparse_equals_dense_and_frame(rng):
    Y, X = two_group(rng)
    Y[:, 5] = 0
    f1 = nbglm(Y, X, size_factors="poscounts")
    f2 = nbglm(sp.csr_matrix(Y), X, size_factors="poscounts", block_size=37)
    assert isinstance(f1, NbGlmFit)
    assert f1.all_zero[5] and np.isnan(f1.p_value[5])
    np.testing.assert_allclose(f1.p_value, f2.p_value, rtol=1e-9, equal_nan=True)
    df = f1.to_frame()
    assert list(df.columns[:9]) == [
        "variable",
        "contrast",
        "log_fc",
        "se",
        "stat",
        "df",
        "p_value",
        "adj_p_value",
        "method",
    ]
    assert (df["method"] == "nbglm").all()
    np.testing.assert_allclose(f1.natural_log_fold_change, f1.coef[:, 1], equal_nan=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f1.base_mean = None  # type: ignore[misc]


def test_fit_fields(rng):
    Y, X = three_arm(rng)
    fit = nbglm(Y, X, contrast="conditionstim")
    G, p = Y.shape[1], X.shape[1]
    assert fit.coef_names == tuple(X.columns) and fit.gene_names == tuple(Y.columns)
    assert fit.cov.shape == (G, p, p) and fit.X.shape == X.shape
    np.testing.assert_array_equal(fit.coef_se, np.sqrt(np.diagonal(fit.cov, axis1=1, axis2=2)))
    assert set(fit.status) <= {"ok", "all_zero", "max_iter"}
    np.testing.assert_array_equal(fit.status == "ok", fit.converged)
    np.testing.assert_allclose(fit.log2_fold_change, fit.coef[:, 2] / np.log(2))
    assert fit.contrast_name == "conditionstim" and fit.loglik is None
    assert "counts" not in repr(fit) and "NbGlmData" not in repr(fit)
    assert list(fit.to_frame().columns)[-1] == "status"
    # a numeric contrast and an index name the same test
    vec = nbglm(Y, X, contrast=np.array([0.0, 0.0, 1.0, 0.0]))
    assert vec.contrast_name == "contrast"
    np.testing.assert_array_equal(vec.p_value, fit.p_value)
    np.testing.assert_array_equal(nbglm(Y, X, contrast=2).p_value, fit.p_value)
    with pytest.raises(ValueError, match="one contrast"):
        nbglm(Y, X, contrast=["conditionstim", "conditionIFN"])


def test_lrt_and_single_cell_preset(rng):
    Y, X = two_group(rng, m=30, G=60)
    f = nbglm(Y, X, test="lrt")
    assert f.test == "lrt" and np.all(f.stat[~np.isnan(f.stat)] > -1e-6)
    assert f.df == 1.0 and f.loglik is not None
    fs = nbglm(Y, X, preset="single_cell")
    assert fs.test == "lrt"
    assert np.isfinite(fs.p_value).sum() > 50


@pytest.mark.slow
def test_nbglm_results_do_not_depend_on_the_thread_count(tmp_path):
    import subprocess
    import sys

    script = (
        "import numpy as np, scipy.sparse as sp, sys\n"
        "from pyflashmm import nbglm\n"
        "rng = np.random.default_rng(15)\n"
        "m, G = 400, 60\n"
        "grp = rng.integers(0, 2, m)\n"
        "X = np.column_stack([np.ones(m), grp])\n"
        "Y = rng.negative_binomial(2, 0.6, (m, G)).astype(float)\n"
        "f = nbglm(sp.csr_matrix(Y), X, preset='single_cell', block_size=16)\n"
        "np.savez(sys.argv[1], d=f.dispersion, b=f.log2_fold_change, p=f.p_value)\n"
    )
    out = {}
    for t in (1, 2):
        env = {**__import__("os").environ, "NUMBA_NUM_THREADS": str(t)}
        path = tmp_path / f"t{t}.npz"
        subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True)
        out[t] = np.load(path)
    for k in ("d", "b", "p"):
        np.testing.assert_array_equal(out[1][k], out[2][k])
