r"""Named simulation scenarios for the method comparison: droplet-like data, unlike the
FLASHMM model, with everything that decides a test's calibration recorded.

The reference scenario, ``flashmm_reference``, is FLASHMM's own model (:func:`pyflashmm.
simulate_rnaseq`: log-normal NB means from its synthetic reference, Gaussian donor effects on
the log scale with one σ_b² for every gene). The others draw counts from the generative model
below, one ingredient changed at a time from ``droplet`` (the realistic baseline).

Generative model (gene g, cell c of donor s and cell type t, arm a(s) ∈ {control, treated})
-------------------------------------------------------------------------------------------
* **Depth**: a size factor s_c = exp(z_c), z_c ~ N(0, ``libsize_sdlog``²) (droplet library
  sizes have log-sd 0.4–0.6); the expected UMI count of a gene is its mean at s_c = 1 times s_c.
* **Gene means**: m_g = exp(N(ln ``mean_median``, ``mean_sdlog``²)) clipped to
  ``mean_range`` UMIs per cell (0.005–20 by default; median 0.03, log-sd 1.8: most genes are
  rare and a few high, so about 90% of the counts are zero, measured 0.896–0.903 on 2,000
  genes × 12 donors × 200 cells); each cell type multiplies it by exp(N(0, ``type_sdlog``²)).
* **Donor effects on the mean**: with per-gene variance σ²_g (``donor_var`` for every gene, or
  σ²_g = ``donor_var``·G_g with G_g ~ Gamma(2, ½) when ``donor_var_per_gene``: mean
  ``donor_var``, coefficient of variation 0.71), either u_gs = exp(b_gs), b_gs ~ N(0, σ²_g)
  (``gaussian``: the LMM's assumption on the log scale) or u_gs ~ Gamma(1/σ²_g, σ²_g)
  (``gamma``: mean 1 and variance σ²_g, the NB-gamma model NEBULA assumes). σ²_g = 0 gives
  u_gs = 1.
* **Donor × cell-type effects**: exp(N(0, ``donor_type_var``)) per (gene, donor, cell type).
* **Treatment**: a fraction ``de_fraction`` of the genes is DE with a natural-log fold change
  ±U(``lfc_range``) (random sign), in the cell type ``de_cell_type`` only
  (``contrast="within"``: the ``cell_type:condition`` interaction) or in every cell type
  (``contrast="average"``).
* **Counts**: y_gc ~ NB(mean s_c·m_g·e^{type}·u_gs·e^{donor×type}·e^{lfc·treated}, dispersion
  φ_g), Var = μ + φ_gμ², φ_g = ``dispersion``·exp(N(0, 0.5²)), drawn as Poisson(Gamma).
* **Design**: donors are split between the arms as ``arms`` says and the split is recorded:
  ``balanced`` puts ⌊S/2⌋ donors in the treated arm; ``unbalanced`` puts ⌊S/4 + ½⌋ (a
  quarter, rounded half up: 1 of 4, 3 of 10, 10 of 40).
  Donor d has N_d = max(5, round(m·exp(N(0, 0.3²)))) cells for a mean m of
  ``cells_per_donor``, and each cell's type is drawn from ``type_proportions``.

Every draw comes from children of ``numpy.random.SeedSequence(seed)``: the design, the gene
parameters and the counts of each gene block have their own streams, so the same seed gives the
same data whatever the block size of the caller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: realistic names: the columns a user's AnnData has
DONOR, CELL_TYPE, CONDITION = "donor_id", "cell_type", "condition"
CONTROL, TREATED = "control", "stimulated"
CELL_TYPES = ("CD4 T", "CD14 Mono", "B", "NK", "CD8 T", "FCGR3A Mono", "DC", "pDC")
#: the bounds the issue sets on the designs
DONOR_RANGE = (4, 40)
CELLS_RANGE = (20, 2000)
#: genes per block of the count draws (one seed stream per block)
GENE_BLOCK = 256


@dataclass(frozen=True)
class Scenario:
    """One named data-generating process (see the module docstring for the symbols)."""

    name: str
    summary: str
    model: str = "droplet"  # "droplet" (the model above) or "flashmm" (simulate_rnaseq)
    mean_median: float = 0.03
    mean_sdlog: float = 1.8
    mean_range: tuple[float, float] = (0.005, 20.0)
    type_sdlog: float = 0.3
    libsize_sdlog: float = 0.5
    dispersion: float = 0.2
    donor_var: float = 0.1
    donor_var_per_gene: bool = True
    donor_effect: str = "gaussian"
    donor_type_var: float = 0.0
    arms: str = "balanced"
    de_fraction: float = 0.1
    lfc_range: tuple[float, float] = (0.4, 1.2)
    contrast: str = "within"
    de_cell_type: str = "CD14 Mono"
    n_cell_types: int = 3
    type_proportions: tuple[float, ...] = (0.45, 0.35, 0.2)

    def __post_init__(self):
        if self.model not in ("droplet", "flashmm"):
            raise ValueError(f"{self.name}: model must be 'droplet' or 'flashmm'")
        if self.donor_effect not in ("gaussian", "gamma"):
            raise ValueError(f"{self.name}: donor_effect must be 'gaussian' or 'gamma'")
        if self.arms not in ("balanced", "unbalanced"):
            raise ValueError(f"{self.name}: arms must be 'balanced' or 'unbalanced'")
        if self.contrast not in ("within", "average"):
            raise ValueError(f"{self.name}: contrast must be 'within' or 'average'")
        if len(self.type_proportions) != self.n_cell_types:
            raise ValueError(f"{self.name}: type_proportions needs n_cell_types entries")
        if self.de_cell_type not in CELL_TYPES[: self.n_cell_types]:
            raise ValueError(f"{self.name}: de_cell_type must be one of the cell types")

    @property
    def cell_types(self) -> tuple[str, ...]:
        return CELL_TYPES[: self.n_cell_types]


_BASE = Scenario("droplet", "droplet-like depth and sparsity, per-gene donor variance")
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "flashmm_reference",
            "FLASHMM's model: Gaussian donor effects on the log scale, one σ_b² for all genes",
            model="flashmm",
            donor_var_per_gene=False,
            contrast="average",
        ),
        _BASE,
        replace(
            _BASE,
            name="gamma_donors",
            summary="donor effects Gamma(1/σ², σ²) on the mean",
            donor_effect="gamma",
        ),
        replace(
            _BASE,
            name="unbalanced_arms",
            summary="a quarter of the donors treated",
            arms="unbalanced",
        ),
        replace(
            _BASE,
            name="donor_by_type",
            summary="donor × cell-type effects (variance 0.1) on top of the donor effects",
            donor_type_var=0.1,
        ),
        replace(
            _BASE,
            name="average_contrast",
            summary="DE in every cell type; the effect averaged over cell types is tested",
            contrast="average",
        ),
    )
}


@dataclass
class ScenarioData:
    """A simulated data set and its truth.

    ``counts``: cells × genes CSR (int32); ``obs``: ``donor_id``, ``cell_type``, ``condition``
    and the true size factor; ``var``: per gene its mean m_g, dispersion φ_g, donor variance
    σ²_g, ``de``, the true natural-log fold change ``lfc`` (0 for non-DE genes) and the cell
    type it applies to (``de_cell_type``: a type, ``"all"``, or ``""`` for non-DE genes);
    ``arms``: the condition of every donor (the recorded split);
    ``donor_effects``: the multiplicative donor effects u_gs (genes × donors; for
    ``flashmm_reference`` exp of its b_gs).
    """

    counts: sp.csr_matrix
    obs: pd.DataFrame
    var: pd.DataFrame
    arms: pd.Series
    donor_effects: np.ndarray
    scenario: Scenario
    params: dict = field(default_factory=dict)

    def to_anndata(self):
        """An AnnData with the counts in ``X`` and ``layers["counts"]`` (as users hold them)."""
        import anndata as ad

        adata = ad.AnnData(X=self.counts.astype(np.float32), obs=self.obs, var=self.var)
        adata.layers["counts"] = self.counts.copy()
        adata.uns["scenario"] = {k: str(v) for k, v in asdict(self.scenario).items()}
        adata.uns["arms"] = self.arms.to_dict()
        return adata


def simulate_scenario(
    scenario: str | Scenario,
    *,
    n_donors: int,
    cells_per_donor: int,
    n_genes: int,
    seed: int,
    null: bool = False,
) -> ScenarioData:
    """Simulate one data set of ``scenario`` (a name in :data:`SCENARIOS` or a
    :class:`Scenario`); ``null=True`` makes no gene DE.

    Raises ``ValueError`` naming the argument when a design is outside the ranges the
    comparison covers (4–40 donors, 20–2,000 cells per donor).
    """
    sc = _scenario(scenario)
    for name, value, (lo, hi) in (("n_donors", n_donors, DONOR_RANGE),
                                  ("cells_per_donor", cells_per_donor, CELLS_RANGE)):  # fmt: skip
        if not isinstance(value, int | np.integer) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}]; got {value!r}")
    if not isinstance(n_genes, int | np.integer) or n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer; got {n_genes!r}")
    ss = np.random.SeedSequence(seed)
    design_seq, gene_seq, count_seq = ss.spawn(3)
    params = dict(n_donors=int(n_donors), cells_per_donor=int(cells_per_donor),
                  n_genes=int(n_genes), seed=int(seed), null=bool(null))  # fmt: skip
    obs, arms = _design(sc, int(n_donors), int(cells_per_donor), np.random.default_rng(design_seq))
    if sc.model == "flashmm":
        return _flashmm(sc, obs, arms, int(n_genes), null, count_seq, params)
    genes = _gene_parameters(sc, int(n_genes), int(n_donors), null, np.random.default_rng(gene_seq))
    counts = _counts(sc, obs, arms, genes, count_seq)
    de_where = sc.de_cell_type if sc.contrast == "within" else "all"
    var = pd.DataFrame(
        {"base_mean": genes["mean"], "dispersion": genes["phi"], "donor_var": genes["donor_var"],
         "de": genes["lfc"] != 0, "lfc": genes["lfc"],
         "de_cell_type": np.where(genes["lfc"] != 0, de_where, "")},
        index=pd.Index([f"GENE{g:05d}" for g in range(n_genes)], name="gene_id"),
    )  # fmt: skip
    return ScenarioData(counts, obs, var, arms, genes["u"], sc, params)


def _scenario(scenario) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}; got {scenario!r}")
    return SCENARIOS[scenario]


def _design(sc: Scenario, S: int, m: int, rng: np.random.Generator):
    """The cells' donors, cell types, conditions and size factors, and the donors' arms."""
    donors = np.array([f"D{d + 1:02d}" for d in range(S)])
    k = S // 2 if sc.arms == "balanced" else (S + 2) // 4
    treated = np.zeros(S, bool)
    treated[rng.permutation(S)[:k]] = True
    arms = pd.Series(np.where(treated, TREATED, CONTROL), index=pd.Index(donors, name=DONOR),
                     name=CONDITION)  # fmt: skip
    n_cells = np.maximum(5, np.round(m * np.exp(rng.normal(0.0, 0.3, S)))).astype(np.int64)
    donor_of = np.repeat(np.arange(S), n_cells)
    types = rng.choice(sc.n_cell_types, size=donor_of.size, p=np.asarray(sc.type_proportions))
    sf = np.exp(rng.normal(0.0, sc.libsize_sdlog, donor_of.size))
    obs = pd.DataFrame(
        {
            DONOR: pd.Categorical(donors[donor_of], categories=donors),
            CELL_TYPE: pd.Categorical(np.asarray(sc.cell_types)[types], categories=sc.cell_types),
            CONDITION: pd.Categorical(arms.to_numpy()[donor_of], categories=[CONTROL, TREATED]),
            "size_factor": sf,
        },
        index=pd.Index([f"cell{i:06d}" for i in range(donor_of.size)], name="cell_id"),
    )
    return obs, arms


def _gene_parameters(sc: Scenario, G: int, S: int, null: bool, rng: np.random.Generator) -> dict:
    lo, hi = sc.mean_range
    mean = np.clip(np.exp(rng.normal(np.log(sc.mean_median), sc.mean_sdlog, G)), lo, hi)
    type_mult = np.exp(rng.normal(0.0, sc.type_sdlog, (G, sc.n_cell_types)))
    phi = sc.dispersion * np.exp(rng.normal(0.0, 0.5, G))
    if sc.donor_var_per_gene:
        donor_var = sc.donor_var * rng.gamma(2.0, 0.5, G)
    else:
        donor_var = np.full(G, sc.donor_var)
    u = np.ones((G, S))
    pos = donor_var > 0
    if sc.donor_effect == "gaussian":
        u[pos] = np.exp(rng.normal(0.0, np.sqrt(donor_var[pos])[:, None], (pos.sum(), S)))
    else:
        shape = 1.0 / donor_var[pos]
        u[pos] = rng.gamma(shape[:, None], donor_var[pos][:, None], (pos.sum(), S))
    dt = np.exp(rng.normal(0.0, np.sqrt(sc.donor_type_var), (G, S, sc.n_cell_types)))
    lfc = np.zeros(G)
    if not null:
        n_de = int(round(sc.de_fraction * G))
        de = rng.choice(G, n_de, replace=False)
        lfc[de] = rng.uniform(*sc.lfc_range, n_de) * rng.choice([-1.0, 1.0], n_de)
    return dict(mean=mean, type_mult=type_mult, phi=phi, donor_var=donor_var, u=u, dt=dt, lfc=lfc)


def _counts(sc: Scenario, obs, arms, genes: dict, count_seq) -> sp.csr_matrix:
    """NB counts by gene blocks (each with its own seed stream), as CSR cells × genes."""
    donor = obs[DONOR].cat.codes.to_numpy()
    ctype = obs[CELL_TYPE].cat.codes.to_numpy()
    treated = (obs[CONDITION] == TREATED).to_numpy()
    de_in_cell = treated.copy()
    if sc.contrast == "within":
        de_in_cell &= ctype == sc.cell_types.index(sc.de_cell_type)
    sf = obs["size_factor"].to_numpy()
    G = genes["mean"].size
    blocks = [(a, min(G, a + GENE_BLOCK)) for a in range(0, G, GENE_BLOCK)]
    cols = []
    for (a, b), seq in zip(blocks, count_seq.spawn(len(blocks)), strict=True):
        rng = np.random.default_rng(seq)
        mu = (sf[:, None] * genes["mean"][None, a:b] * genes["type_mult"][a:b, ctype].T
              * genes["u"][a:b, donor].T * genes["dt"][a:b, donor, ctype].T
              * np.exp(genes["lfc"][None, a:b] * de_in_cell[:, None]))  # fmt: skip
        phi = genes["phi"][None, a:b]
        lam = rng.gamma(1.0 / phi, mu * phi)
        cols.append(sp.csc_matrix(rng.poisson(lam).astype(np.int32)))
    return sp.hstack(cols, format="csr")


def _flashmm(sc: Scenario, obs, arms, G: int, null: bool, count_seq, params) -> ScenarioData:
    """FLASHMM's model on the same donors, cells and arms (its own counts and effects)."""
    import pyflashmm as fm

    meta = pd.DataFrame(
        {"sam": obs[DONOR].astype(str).to_numpy(), "cls": obs[CELL_TYPE].astype(str).to_numpy(),
         "trt": obs[CONDITION].astype(str).to_numpy()},
        index=obs.index,
    )  # fmt: skip
    sim = fm.simulate_rnaseq(
        n_genes=G,
        n_cells=len(meta),
        metadata=meta,
        treatment=TREATED,
        n_de_genes=0 if null else int(round(sc.de_fraction * G)),
        var_random_effects=sc.donor_var,
        null=null,
        rng=np.random.default_rng(count_seq),
    )
    counts = sp.csr_matrix(sim.counts).astype(np.int32)
    de = sim.var["de"].to_numpy(bool)
    var = pd.DataFrame(
        {"base_mean": np.asarray(counts.mean(axis=0)).ravel(), "dispersion": 1.0 / sim.var["size"],
         "donor_var": sc.donor_var, "de": de, "lfc": np.where(de, sim.var["beta"], 0.0),
         "de_cell_type": np.where(de, sim.var["cluster"].astype(str), "")},
        index=pd.Index(sim.gene_names, name="gene_id"),
    )  # fmt: skip
    effects = sim.random_effects.reindex(arms.index)  # subjects × genes, in donor order
    u = np.exp(effects.to_numpy()).T
    return ScenarioData(counts, obs, var, arms, u, sc, params)
