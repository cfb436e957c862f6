"""The simulation scenarios draw what their documentation says: depth, sparsity, donor
effects, recorded arms, DE where stated; the same seed gives the same data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from validation.scenarios import (
    CELL_TYPE,
    CONDITION,
    DONOR,
    SCENARIOS,
    TREATED,
    simulate_scenario,
)

SMALL = dict(n_donors=8, cells_per_donor=60, n_genes=150)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_gives_a_consistent_data_set(name):
    d = simulate_scenario(name, seed=5, **SMALL)
    n = d.counts.shape[0]
    assert d.counts.shape == (n, SMALL["n_genes"]) and d.counts.dtype == np.int32
    assert list(d.obs.columns[:3]) == [DONOR, CELL_TYPE, CONDITION] and len(d.obs) == n
    # the arms are recorded, and every cell's condition is its donor's
    assert (d.obs[CONDITION].astype(str).to_numpy()
            == d.arms.loc[d.obs[DONOR].astype(str)].to_numpy()).all()  # fmt: skip
    assert d.donor_effects.shape == (SMALL["n_genes"], SMALL["n_donors"])
    assert d.var["de"].sum() == round(d.scenario.de_fraction * SMALL["n_genes"])
    assert (d.var.loc[~d.var["de"], "lfc"] == 0).all()
    assert (d.var.loc[d.var["de"], "lfc"] != 0).all()
    again = simulate_scenario(name, seed=5, **SMALL)
    assert (again.counts != d.counts).nnz == 0 and again.obs.equals(d.obs)
    other = simulate_scenario(name, seed=6, **SMALL)
    assert other.counts.shape != d.counts.shape or (other.counts != d.counts).nnz > 0
    null = simulate_scenario(name, seed=5, null=True, **SMALL)
    assert not null.var["de"].any()
    adata = d.to_anndata()
    assert (adata.layers["counts"] != d.counts).nnz == 0 and adata.uns["scenario"]["name"] == name


def test_droplet_depth_and_sparsity():
    d = simulate_scenario("droplet", n_donors=12, cells_per_donor=200, n_genes=2000, seed=0)
    c = d.counts
    zeros = 1.0 - c.nnz / (c.shape[0] * c.shape[1])
    assert 0.87 < zeros < 0.93
    assert abs(np.log(d.obs["size_factor"]).std() - 0.5) < 0.03
    # realised library sizes carry the size factors' spread plus Poisson noise
    assert 0.45 < np.log(np.asarray(c.sum(axis=1)).ravel()).std() < 0.65
    m = d.var["base_mean"]
    assert m.min() >= 0.005 and m.max() <= 20 and (m == 0.005).any() and m.quantile(0.99) > 1


@pytest.mark.parametrize("effect", ["gaussian", "gamma"])
def test_donor_effects_have_the_stated_moments(effect):
    sc = replace(SCENARIOS["droplet"], donor_effect=effect, donor_var=0.2,
                 donor_var_per_gene=False)  # fmt: skip
    d = simulate_scenario(sc, n_donors=40, cells_per_donor=20, n_genes=3000, seed=1)
    u = d.donor_effects
    if effect == "gamma":  # mean 1, variance σ² on the mean scale (NEBULA's NB-gamma)
        assert abs(u.mean() - 1.0) < 0.01
        assert abs(u.var() - 0.2) < 0.01
    else:  # N(0, σ²) on the log scale (the LMM's assumption)
        assert abs(np.log(u).mean()) < 0.01
        assert abs(np.log(u).var() - 0.2) < 0.01


def test_per_gene_donor_variance_varies_around_its_mean():
    d = simulate_scenario("droplet", n_donors=40, cells_per_donor=20, n_genes=4000, seed=2)
    v = d.var["donor_var"]
    assert abs(v.mean() - 0.1) < 0.005
    assert abs(v.std() / v.mean() - np.sqrt(0.5)) < 0.05  # Gamma(2, ½): CV 1/√2
    # the drawn effects follow each gene's own variance
    low, high = v < v.quantile(0.2), v > v.quantile(0.8)
    lv = np.log(d.donor_effects).var(axis=1)
    assert lv[high.to_numpy()].mean() > 3 * lv[low.to_numpy()].mean()


@pytest.mark.parametrize("donors, treated", [(4, 1), (5, 1), (10, 3), (12, 3), (40, 10)])
def test_unbalanced_arms_are_fixed_not_drawn(donors, treated):
    for seed in range(3):
        d = simulate_scenario("unbalanced_arms", n_donors=donors, cells_per_donor=20,
                              n_genes=10, seed=seed)  # fmt: skip
        assert (d.arms == TREATED).sum() == treated
        b = simulate_scenario("droplet", n_donors=donors, cells_per_donor=20, n_genes=10,
                              seed=seed)  # fmt: skip
        assert (b.arms == TREATED).sum() == donors // 2


@pytest.mark.parametrize("contrast", ["within", "average"])
def test_de_applies_where_the_scenario_says(contrast):
    """Treated/control mean ratios of strongly expressed DE genes: exp(lfc) in the DE cell type
    (every type for the averaged contrast), 1 elsewhere; the donor effects are turned off so
    that the ratio is the effect alone."""
    sc = replace(SCENARIOS["droplet"], contrast=contrast, donor_var=0.0, de_fraction=0.5,
                 mean_median=5.0, mean_sdlog=0.1, type_sdlog=0.0)  # fmt: skip
    d = simulate_scenario(sc, n_donors=20, cells_per_donor=400, n_genes=40, seed=3)
    de = d.var["de"].to_numpy()
    expect = np.exp(d.var["lfc"].to_numpy())
    sf = d.obs["size_factor"].to_numpy()[:, None]
    y = d.counts.toarray() / sf
    treated = (d.obs[CONDITION] == TREATED).to_numpy()
    for ct in sc.cell_types:
        cells = (d.obs[CELL_TYPE] == ct).to_numpy()
        ratio = y[cells & treated].mean(axis=0) / y[cells & ~treated].mean(axis=0)
        hit = contrast == "average" or ct == sc.de_cell_type
        np.testing.assert_allclose(ratio[de], expect[de] if hit else 1.0, rtol=0.12)
        np.testing.assert_allclose(ratio[~de], 1.0, rtol=0.12)
    assert set(d.var.loc[de, "de_cell_type"]) == {"all" if contrast == "average" else "CD14 Mono"}


def test_bad_designs_and_names_are_refused_before_any_draw():
    with pytest.raises(ValueError, match=r"n_donors must be an integer in \[4, 40\]; got 3"):
        simulate_scenario("droplet", n_donors=3, cells_per_donor=50, n_genes=10, seed=0)
    with pytest.raises(ValueError, match=r"cells_per_donor must be an integer in \[20, 2000\]"):
        simulate_scenario("droplet", n_donors=6, cells_per_donor=5000, n_genes=10, seed=0)
    with pytest.raises(ValueError, match="scenario must be one of"):
        simulate_scenario("droplets", n_donors=6, cells_per_donor=50, n_genes=10, seed=0)
    with pytest.raises(ValueError, match="donor_effect must be"):
        replace(SCENARIOS["droplet"], donor_effect="lognormal")
