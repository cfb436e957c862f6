"""Linear mixed models fitted per gene from summary statistics (the FLASHMM method).

Model, for each gene (Y's column) y ∈ ℝⁿ:

    y = Xβ + Σₖ Zₖbₖ + ε,   bₖ ~ N(0, σₖ² I_{qₖ}),   ε ~ N(0, σ² Iₙ),

K random-effect blocks of sizes d = (q₁, …, q_K), Z = [Z₁ … Z_K] (n × q). The variance components
θ = (σ₁², …, σ_K², σ²) — residual variance last, FLASHMM's order — are estimated by REML or ML with
Fisher scoring on the summary statistics XᵀX, XᵀY, ZᵀX, ZᵀY, ZᵀZ, Σy², n (see
:func:`pyflashmm.summary_stats`), so the cost does not grow with the number of cells. The maths
of the score, the expected information and the likelihood is in :mod:`pyflashmm._kernels.lmm`.

Given θ̂, β̂ = (XᵀV⁻¹X)⁻¹XᵀV⁻¹y and Cov(β̂) = (XᵀV⁻¹X)⁻¹ with V = σ²(I + Z D Zᵀ), D = diag(σₖ²/σ²).
Tests use t = β̂/se with df = n − p (FLASHMM's choice). ``loglik`` is the log-likelihood (ML) or
the REML criterion on lme4's scale, −½[(n−p) log 2π + log|V| + log|XᵀV⁻¹X| + (y−Xβ̂)ᵀV⁻¹(y−Xβ̂)],
which equals ``lme4::logLik`` and statsmodels' ``llf`` (FLASHMM's REML value adds ½ log|XᵀX|).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg
from tqdm.auto import tqdm

from pyflashmm import _checks, _status
from pyflashmm._design import Design
from pyflashmm._jit import numba_parallel_only
from pyflashmm._kernels import lmm as _k
from pyflashmm._lmm.stats import DEFAULT_CHUNK_SIZE, SummaryStats, summary_stats
from pyflashmm._pvalues import t_two_sided
from pyflashmm._status import STATUS_NAMES

#: statuses whose estimates are NaN (no usable fit)
_FAILED = (_status.ZERO_VARIANCE, _status.NOT_POSITIVE_DEFINITE, _status.SINGULAR_INFORMATION)
_METHODS = ("REML", "ML")
_ENGINES = ("auto", "eigen", "dense")


class ConvergenceWarning(UserWarning):
    """Some genes did not converge or could not be fitted (see ``LmmFit.status``)."""


@dataclass(frozen=True, eq=False)
class LmmFit:
    """Per-gene LMM fits; every array is gene-major (first axis = genes).

    Attributes
    ----------
    coef, se, t, p_value : ndarray, G × p
        β̂, its standard errors √diag Cov(β̂), t = β̂/se and two-sided p-values on ``df``.
    df : float
        Degrees of freedom of the t tests, n − p.
    cov : ndarray or None, G × p × p
        Cov(β̂) = σ̂²C⁻¹ with C = σ²XᵀV⁻¹X (None with ``output_cov=False``).
    theta : ndarray, G × (K+1)
        Variance components (σ₁², …, σ_K², σ²), residual last.
    se_theta : ndarray, G × (K+1)
        √diag of the inverse expected information of θ.
    fim_theta : ndarray, G × (K+1) × (K+1)
        Expected (Fisher) information of θ at θ̂.
    dlogL : ndarray, G × (K+1)
        Score ∂ℓ/∂θ at θ̂ (≈ 0 when converged).
    loglik : ndarray, G
        ML log-likelihood or REML criterion on lme4's scale.
    niter : ndarray of int, G
        Fisher-scoring iterations.
    converged : ndarray of bool, G
        max |dlogL| < tol (components held at 0 by ``nonneg`` excepted).
    status : ndarray of str, G
        One of :data:`STATUS_NAMES`.
    method : str
        "REML" or "ML".
    nonneg : bool or "refit"
        The ``nonneg`` option of :func:`lmm`.
    boundary : ndarray of bool, G × K
        σₖ² held at its bound 0 (status ``boundary``): tests treat it as known, as lmerTest
        does at a singular fit.
    refitted : ndarray of bool, G
        Genes fitted again with σₖ² ≥ 0 because the unconstrained fit had no usable maximum
        (``nonneg="refit"``); their ``status`` is that of the refit.
    n, d : int, ndarray
        Number of cells and random-effect block sizes.
    fixed_names, theta_names, gene_names : list of str
        Names of the coefficients, of the variance components and of the genes. The variance
        components are named after the random-effect blocks (``["donor_id", "batch",
        "residual"]``), or ``var1, …, varK, residual`` when the statistics carry no block labels.
    stats : SummaryStats
        The statistics the fit came from (a reference, not a copy); inference that needs more
        than β̂ and Cov(β̂) (Satterthwaite df, BLUPs) reads them.

    The fit also keeps, privately, the decompositions it was computed from (Cholesky of XᵀX,
    eigen-decompositions of ZᵀRZ and ZᵀZ, …), so that :func:`lmmtest` and
    :func:`random_effects` reuse them instead of rebuilding them for every call.
    """

    coef: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p_value: np.ndarray
    df: float
    cov: np.ndarray | None
    theta: np.ndarray
    se_theta: np.ndarray
    fim_theta: np.ndarray
    dlogL: np.ndarray
    loglik: np.ndarray
    niter: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    method: str
    nonneg: bool | str
    boundary: np.ndarray
    refitted: np.ndarray
    n: int
    d: np.ndarray
    fixed_names: list[str]
    theta_names: list[str]
    gene_names: list[str]
    stats: SummaryStats | None = None
    _prepared: _Prepared | None = field(default=None, repr=False, compare=False)

    @property
    def n_genes(self) -> int:
        return self.coef.shape[0]

    def to_frame(self) -> pd.DataFrame:
        """Tidy table, one row per (gene, coefficient).

        Columns: ``variable`` (gene), ``term``, ``estimate``, ``se``, ``stat`` (t), ``df``,
        ``p_value``, ``converged``, ``status``.
        """
        G, p = self.coef.shape
        return pd.DataFrame(
            {
                "variable": np.repeat(np.asarray(self.gene_names, dtype=object), p),
                "term": np.tile(np.asarray(self.fixed_names, dtype=object), G),
                "estimate": self.coef.ravel(),
                "se": self.se.ravel(),
                "stat": self.t.ravel(),
                "df": np.full(G * p, self.df),
                "p_value": self.p_value.ravel(),
                "converged": np.repeat(self.converged, p),
                "status": np.repeat(self.status, p),
            }
        )

    def theta_frame(self) -> pd.DataFrame:
        """Variance components per gene: columns ``<name>``, ``se_<name>``, ``loglik``, status."""
        out = pd.DataFrame(self.theta, columns=self.theta_names, index=self.gene_names)
        for j, name in enumerate(self.theta_names):
            out[f"se_{name}"] = self.se_theta[:, j]
        out["loglik"] = self.loglik
        out["niter"] = self.niter
        out["converged"] = self.converged
        out["status"] = self.status
        return out


def _stats_from_args(stats, XY, ZX, ZY, ZZ, Ynorm, n, d) -> SummaryStats:
    positional = (XY, ZX, ZY, ZZ, Ynorm, n)
    if isinstance(stats, SummaryStats):
        if any(a is not None for a in positional) or d is not None:
            raise TypeError("pass either a SummaryStats or the arrays XX, XY, ZX, ZY, ZZ, Ynorm, n")
        return stats
    if any(a is None for a in positional):
        raise TypeError(
            "lmm needs a SummaryStats, or FLASHMM-style XX, XY, ZX, ZY, ZZ, Ynorm, n (and d)"
        )
    arrays = {}
    for name, value in zip(
        ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm"), (stats, XY, ZX, ZY, ZZ, Ynorm), strict=True
    ):
        arr = np.asarray(value)
        _checks.check_numeric_dtype(name, arr.dtype)
        arrays[name] = np.asarray(arr, dtype=np.float64)
    XYa = arrays["XY"]
    if XYa.ndim == 1:
        arrays["XY"] = XYa[:, None]
    if arrays["ZY"].ndim == 1:
        arrays["ZY"] = arrays["ZY"][:, None]
    arrays["Ynorm"] = np.atleast_1d(arrays["Ynorm"])
    if isinstance(n, np.ndarray) and n.ndim == 0 and n.dtype.kind in "iuf":
        n = n.item()  # e.g. read back from an .npz
    if not isinstance(n, int | float | np.integer | np.floating) or isinstance(n, bool):
        raise TypeError(f"n must be a number of cells; got {type(n).__name__}")
    if float(n) != int(n) or int(n) <= 0:
        raise ValueError(f"n must be a positive integer number of cells; got {n!r}")
    ZZa = arrays["ZZ"]
    q = ZZa.shape[0] if ZZa.ndim == 2 else -1
    return SummaryStats(
        XX=arrays["XX"],
        XY=arrays["XY"],
        ZX=arrays["ZX"],
        ZY=arrays["ZY"],
        ZZ=ZZa,
        Ynorm=arrays["Ynorm"],
        n=int(n),
        d=_checks.check_block_sizes(d, q) if q > 0 else np.asarray(d),
        fixed_names=_checks.default_names("x", arrays["XX"].shape[0]),
        random_names=_checks.default_names("z", max(q, 0)),
        gene_names=_checks.default_names("gene", arrays["XY"].shape[1]),
    )


def _validate_stats(s: SummaryStats) -> None:
    if s.XX.ndim != 2 or s.XX.shape[0] != s.XX.shape[1]:
        raise ValueError(f"XX must be a square p×p matrix; got shape {s.XX.shape}")
    p = s.XX.shape[0]
    if s.ZZ.ndim != 2 or s.ZZ.shape[0] != s.ZZ.shape[1]:
        raise ValueError(f"ZZ must be a square q×q matrix; got shape {s.ZZ.shape}")
    q = s.ZZ.shape[0]
    G = s.XY.shape[1] if s.XY.ndim == 2 else -1
    expected = {"XY": (p, G), "ZX": (q, p), "ZY": (q, G), "Ynorm": (G,)}
    for name, shape in expected.items():
        if getattr(s, name).shape != shape:
            raise ValueError(f"{name} has shape {getattr(s, name).shape}; expected {shape}")
    for name in ("XX", "XY", "ZX", "ZY", "ZZ", "Ynorm"):
        _checks.check_finite(name, getattr(s, name))
    _checks.check_block_sizes(s.d, q)
    if s.n <= p:
        raise ValueError(f"n = {s.n} cells must exceed p = {p} fixed effects")
    if np.any(s.Ynorm < 0):
        raise ValueError(f"Ynorm must be ≥ 0 (a sum of squares); gene {int(np.argmin(s.Ynorm))}")
    if not np.allclose(s.XX, s.XX.T, rtol=1e-10, atol=0) or not np.allclose(s.ZZ, s.ZZ.T):
        raise ValueError("XX and ZZ must be symmetric")
    _checks.check_full_rank(s.XX, s.fixed_names)


def _theta_start(theta0, yRy, n, p, K1) -> np.ndarray:
    G = yRy.shape[0]
    if theta0 is None:
        start = np.zeros((G, K1))
        start[:, -1] = yRy / (n - p)
        return start
    arr = np.asarray(theta0, dtype=np.float64)
    if arr.shape == (K1,):
        arr = np.broadcast_to(arr, (G, K1))
    if arr.shape != (G, K1):
        raise ValueError(f"theta0 must have shape ({K1},) or ({G}, {K1}); got {arr.shape}")
    _checks.check_finite("theta0", arr)
    if np.any(arr[:, -1] <= 0):
        raise ValueError("theta0: the residual variance (last entry) must be > 0")
    return np.ascontiguousarray(arr)


def _psd_sqrt(A: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(A)
    return np.ascontiguousarray((vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T)


_ZERO_TOL = 1e-10  # yᵀRy ≤ this × Σy²: the gene is (numerically) in the span of X


@dataclass(frozen=True, eq=False)
class _Problem:
    """Quantities shared by all genes after residualising on X (see the kernels' notation).

    ``W`` is G × q: ZᵀRy rotated by the eigenvectors of S (eigen path) or ZᵀRy itself (dense).
    Eigen path (K = 1): S = U diag(λ) Uᵀ, ZZ = Q diag(μ) Qᵀ. Dense path: ``Ws`` = S^{1/2},
    ``Wz`` = ZZ^{1/2}, ``blocks`` maps each of the q columns to its block.
    """

    K: int
    reml: bool
    eigen: bool
    n_eff: float
    ll_const: float
    yRy: np.ndarray
    W: np.ndarray
    S: np.ndarray
    lam: np.ndarray | None = None
    mu: np.ndarray | None = None
    mu_t: np.ndarray | None = None
    mu_max: float = 0.0
    Q: np.ndarray | None = None
    Ws: np.ndarray | None = None
    Wz: np.ndarray | None = None
    blocks: np.ndarray | None = None

    @classmethod
    def build(cls, s: SummaryStats, method: str, engine: str) -> _Problem:
        K = len(s.d)
        if engine == "eigen" and K != 1:
            raise ValueError(f"engine='eigen' needs one random-effect block (K = 1); d = {s.d}")
        eigen = engine == "eigen" or (engine == "auto" and K == 1)
        reml = method == "REML"
        chol = scipy.linalg.cho_factor(s.XX, lower=True)
        AXY = scipy.linalg.cho_solve(chol, s.XY)
        yRy = s.Ynorm - np.einsum("pg,pg->g", s.XY, AXY)
        ZRy = s.ZY - s.ZX @ AXY  # q × G
        S = s.ZZ - s.ZX @ scipy.linalg.cho_solve(chol, s.ZX.T)
        S = 0.5 * (S + S.T)
        ZZ = _sym(s.ZZ)
        start = 0
        for k, qk in enumerate(s.d):
            block = slice(start, start + int(qk))
            start += int(qk)
            if np.diag(S)[block].max() <= 1e-10 * max(np.diag(ZZ)[block].max(), 1e-300):
                raise ValueError(
                    f"d: random-effect block {k + 1} lies in the span of X (ZᵀRZ = 0 on it), "
                    "so its variance is not identifiable; remove it or the columns of X it "
                    "duplicates"
                )
        logdet_XX = 2.0 * np.sum(np.log(np.diag(chol[0])))
        n_eff = float(s.n - s.p) if reml else float(s.n)
        ll_const = n_eff * np.log(2 * np.pi) + (logdet_XX if reml else 0.0)
        common = {"K": K, "reml": reml, "eigen": eigen, "n_eff": n_eff, "ll_const": ll_const}
        if eigen:
            return cls._eigen_path(common, yRy, ZRy, S, ZZ)
        return cls(
            **common, yRy=yRy, W=np.ascontiguousarray(ZRy.T), S=np.ascontiguousarray(S),
            Ws=_psd_sqrt(S), Wz=_psd_sqrt(ZZ), blocks=_block_of_columns(s.d),
        )  # fmt: skip

    @classmethod
    def _eigen_path(cls, common: dict, yRy, ZRy, S, ZZ) -> _Problem:
        """The K = 1 problem from the residualised pieces: eigen-decompositions of S and ZZ."""
        lam, U = np.linalg.eigh(S)
        lam = np.clip(lam, 0.0, None)
        mu, Q = np.linalg.eigh(ZZ)
        mu = np.clip(mu, 0.0, None)
        return cls(
            **common, yRy=yRy, W=np.ascontiguousarray(ZRy.T @ U), S=S, lam=lam, mu=mu,
            mu_t=np.ascontiguousarray(lam if common["reml"] else mu), mu_max=float(mu.max()), Q=Q,
        )  # fmt: skip

    def as_eigen(self, s: SummaryStats) -> _Problem:
        """This problem on the eigen path (K = 1); a dense one is converted without redoing the
        Cholesky of XX: ZᵀRy is its ``W`` transposed back to the q × G layout :meth:`build`
        multiplies by U, so the result is bitwise that of ``build(s, method, "eigen")``."""
        if self.eigen:
            return self
        if self.K != 1:
            raise ValueError(f"the eigen path needs one random-effect block (K = 1); K = {self.K}")
        common = {
            "K": self.K, "reml": self.reml, "eigen": True, "n_eff": self.n_eff,
            "ll_const": self.ll_const,
        }  # fmt: skip
        ZRy = np.ascontiguousarray(self.W.T)
        return self._eigen_path(common, self.yRy, ZRy, self.S, _sym(s.ZZ))

    def evaluate(self, theta: np.ndarray):
        """(loglik, score, information) at θ (G × (K+1)) for every gene."""
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        if self.eigen:
            return _k.evaluate_k1(
                theta, self.W, self.yRy, self.lam, self.mu_t, self.n_eff, self.ll_const
            )
        return _k.evaluate_general(
            theta, self.W, self.yRy, self.S, self.Ws, self.Wz, self.blocks, self.K, self.reml,
            self.n_eff, self.ll_const,
        )  # fmt: skip


def _sym(A: np.ndarray) -> np.ndarray:
    return 0.5 * (A + A.T)


def _block_of_columns(d) -> np.ndarray:
    """The block index of each of the q random-effect columns."""
    return np.repeat(np.arange(len(d)), d).astype(np.int64)


class _Prepared:
    """The problem a fit was computed from, kept so that inference never rebuilds it.

    Inference needs, besides what the fit built: the eigen path for K = 1 (when the fit used
    ``engine="dense"``), ZZ^{1/2} and the column blocks (BLUPs, and K ≥ 2 Satterthwaite; the
    eigen path has ZZ's eigen-decomposition instead) and QᵀZX. Each is computed on first use,
    from the pieces already here, with the operations :meth:`_Problem.build` would use, and kept.
    The object is mutable only as a cache; it belongs to one (statistics, method) pair.

    The fit builds its problem with BLAS limited to one thread (:func:`numba_parallel_only`) and
    the public inference functions run the same way: the last bits of an eigen-decomposition
    of a q × q matrix (q ≳ 100) depend on the BLAS thread count, and inference must see the
    decompositions the fit used, whatever the caller's BLAS settings.
    """

    __slots__ = ("stats", "method", "problem", "_eigen", "_Wz", "_ZXq")

    def __init__(self, stats: SummaryStats, method: str, problem: _Problem):
        self.stats = stats
        self.method = method
        self.problem = problem
        self._eigen: _Problem | None = problem if problem.eigen else None
        self._Wz: np.ndarray | None = problem.Wz
        self._ZXq: np.ndarray | None = None

    @property
    def K(self) -> int:
        return self.problem.K

    @property
    def blocks(self) -> np.ndarray:
        """Block index of each random-effect column (q,)."""
        if self.problem.blocks is not None:
            return self.problem.blocks
        return _block_of_columns(self.stats.d)

    def inference_problem(self) -> _Problem:
        """The problem ``engine="auto"`` builds: the eigen path for K = 1, else the dense one."""
        if self.K == 1:
            if self._eigen is None:
                self._eigen = self.problem.as_eigen(self.stats)
            return self._eigen
        return self.problem

    def Wz(self) -> np.ndarray:
        """ZZ^{1/2}, from ZZ's eigen-decomposition when the fit has it (as :func:`_psd_sqrt`)."""
        if self._Wz is None:
            e = self.inference_problem()
            self._Wz = np.ascontiguousarray((e.Q * np.sqrt(e.mu)) @ e.Q.T)
        return self._Wz

    def ZXq(self) -> np.ndarray:
        """QᵀZX for K = 1 (ZZ = Q diag(μ) Qᵀ), C-contiguous."""
        if self._ZXq is None:
            self._ZXq = np.ascontiguousarray(self.inference_problem().Q.T @ self.stats.ZX)
        return self._ZXq


_REFIT = "refit"
#: statuses of an unconstrained fit that ``nonneg="refit"`` fits again with σₖ² ≥ 0: every way
#: of not converging but a degenerate gene
_REFIT_STATUSES = (
    _status.PD_BOUNDARY,
    _status.NOT_POSITIVE_DEFINITE,
    _status.MAX_ITER,
    _status.LINE_SEARCH_FAILED,
    _status.SINGULAR_INFORMATION,
)
#: iterations allowed to a refit: near σₖ² = 0 Fisher scoring converges only linearly, and
#: genes stopped at ``max_iter`` = 50 with a small σₖ² needed 57–84 (calibration data)
_REFIT_MAX_ITER = 200
_GENE_BLOCK = 2048  # genes per block in the fixed-effects step (bounds its temporaries)
_FIT_BLOCK = 8192  # genes per block of the fit (the unit of the progress bar)


def _fixed_effects_eigen(s: SummaryStats, prob: _Problem, theta, ok, genes: slice, coef, se, bad,
                         cov):  # fmt: skip
    """β̂, Cov(β̂), se of the genes ``genes`` for K = 1, written into ``coef``, ``se``, ``bad``
    and ``cov`` (None: not kept); the per-gene p×p matrices come from one BLAS product.

    With ZZ = Q diag(μ) Qᵀ, z_j the rows of QᵀZX and h_g = γ_g/(1 + γ_g μ):
    C_g = XX − Σ_j h_gj z_j z_jᵀ (a block of genes at once: H (b×q) @ [z_j z_jᵀ] (q×p²)),
    rhs_g = XY_g − Σ_j h_gj (QᵀZY)_jg z_j; then Cov = σ²C⁻¹ and β̂ = C⁻¹rhs per gene (Numba).
    """
    p = s.p
    ZXq = prob.Q.T @ s.ZX
    outer = np.einsum("ja,jb->jab", ZXq, ZXq).reshape(ZXq.shape[0], p * p)
    th = theta[genes]
    with np.errstate(invalid="ignore", divide="ignore"):
        gam = th[:, 0] / th[:, 1]
        H = gam[:, None] / (1.0 + gam[:, None] * prob.mu[None, :])
    H[~ok] = 0.0
    ZYq = s.ZY[:, genes].T @ prob.Q
    first = genes.start
    for a in range(0, th.shape[0], _GENE_BLOCK):
        b = min(th.shape[0], a + _GENE_BLOCK)
        rows = slice(first + a, first + b)
        C = cov[rows] if cov is not None else np.empty((b - a, p, p))
        np.matmul(H[a:b], outer, out=C.reshape(b - a, p * p))  # Σ_j h_gj z_j z_jᵀ
        rhs = s.XY[:, rows].T - (H[a:b] * ZYq[a:b]) @ ZXq
        _k.fixed_effects_from_C(
            C, s.XX, np.ascontiguousarray(rhs), th[a:b, 1], ok[a:b], coef[rows], se[rows], bad[rows]
        )


def loglik_score(stats: SummaryStats, theta, *, method: str = "REML", engine: str = "auto"):
    """Log-likelihood (ML) or REML criterion, score and expected information at given θ.

    Useful for profiles and diagnostics. ``theta`` is (K+1,) for every gene or G × (K+1);
    θ where V is not positive definite gives NaN (with the dense engine; the eigen engine
    checks only σ² > 0).

    Returns
    -------
    loglik : ndarray (G,)
    score : ndarray (G, K+1)
    information : ndarray (G, K+1, K+1)
    """
    if method not in _METHODS:
        raise ValueError(f"method must be 'REML' or 'ML'; got {method!r}")
    _validate_stats(stats)
    prob = _Problem.build(stats, method, engine)
    theta = np.asarray(theta, dtype=np.float64)
    K1 = prob.K + 1
    if theta.shape == (K1,):
        theta = np.broadcast_to(theta, (stats.n_genes, K1))
    if theta.shape != (stats.n_genes, K1):
        raise ValueError(f"theta must have shape ({K1},) or ({stats.n_genes}, {K1})")
    return prob.evaluate(theta)


def lmm(
    stats,
    XY=None,
    ZX=None,
    ZY=None,
    ZZ=None,
    Ynorm=None,
    n=None,
    d=None,
    *,
    method: str = "REML",
    max_iter: int = 50,
    tol: float = 1e-5,
    theta0=None,
    nonneg: bool | str = "refit",
    output_cov: bool = True,
    engine: str = "auto",
    warn: bool = True,
    progress: bool | None = None,
) -> LmmFit:
    """Fit the LMM of every gene from summary statistics by REML or ML (Fisher scoring).

    Parameters
    ----------
    stats : SummaryStats or ndarray
        The statistics; or, FLASHMM-style, ``XX`` followed positionally by
        ``XY, ZX, ZY, ZZ, Ynorm, n, d`` (shapes as in :class:`SummaryStats`).
    method : {"REML", "ML"}
    max_iter : int
        Maximum Fisher-scoring iterations per gene.
    tol : float
        Convergence when max |∂ℓ/∂θ| < tol (FLASHMM's ``epsilon``).
    theta0 : array-like, optional
        Start (K+1,) for every gene or (G, K+1); default (0, …, 0, yᵀRy/(n−p)) as FLASHMM.
    nonneg : bool or "refit"
        ``True``: constrain σₖ² ≥ 0 (lme4's semantics). ``False``: variance components may be
        negative as long as V stays positive definite (FLASHMM's semantics); a gene whose
        likelihood keeps rising towards the edge of that region (``pd_boundary``) or whose
        XᵀV⁻¹X is not positive definite gets no fit. ``"refit"``: FLASHMM's semantics, and
        every gene whose fit did not converge (but for degenerate genes, ``zero_variance``) is
        fitted again with σₖ² ≥ 0 (with at least 200 iterations); where that refit converges
        it replaces the first (``LmmFit.refitted``). ``"refit"`` is the default: in the
        calibration experiment (``validation/lmm_inference.py``) it leaves at most 0.03% of
        the null genes without a p-value in any grid (FLASHMM's semantics: 2.4–6.5%), with
        type-I errors like FLASHMM's where both have one, and fewer settings above α than
        ``nonneg=True``.
    output_cov : bool
        Keep the G × p × p covariance matrices of β̂.
    engine : {"auto", "eigen", "dense"}
        "eigen" is the O(q)-per-iteration path for one random-effect block (K = 1); "dense" the
        general O(q³) path; "auto" picks "eigen" when K = 1.
    warn : bool
        Emit one :class:`ConvergenceWarning` summarising genes that did not converge.
    progress : bool, optional
        Progress bar over blocks of 8,192 genes (default: shown for more than 2 blocks).

    Returns
    -------
    LmmFit
    """
    s = _stats_from_args(stats, XY, ZX, ZY, ZZ, Ynorm, n, d)
    if method not in _METHODS:
        raise ValueError(f"method must be 'REML' or 'ML'; got {method!r}")
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {_ENGINES}; got {engine!r}")
    if not isinstance(max_iter, int | np.integer) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer; got {max_iter!r}")
    if not isinstance(tol, int | float | np.integer | np.floating) or not (
        np.isfinite(tol) and tol > 0
    ):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if not (isinstance(nonneg, bool | np.bool_) or nonneg == _REFIT):
        raise ValueError(f"nonneg must be True, False or {_REFIT!r}; got {nonneg!r}")
    for name, flag in (("output_cov", output_cov), ("warn", warn)):
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(f"{name} must be True or False; got {flag!r}")
    _validate_stats(s)
    return _fit(s, method, engine, max_iter, tol, theta0, nonneg, output_cov, warn, progress)


@numba_parallel_only
def _fit(s, method, engine, max_iter, tol, theta0, nonneg, output_cov, warn, progress) -> LmmFit:
    """The body of :func:`lmm` once the arguments are validated."""
    prob = _Problem.build(s, method, engine)
    K, n_, p, G = prob.K, s.n, s.p, s.n_genes
    start = _theta_start(theta0, prob.yRy, n_, p, K + 1)
    K1 = K + 1
    theta = np.empty((G, K1))
    score = np.empty((G, K1))
    info = np.empty((G, K1, K1))
    loglik = np.empty(G)
    niter = np.empty(G, dtype=np.int64)
    status = np.empty(G, dtype=np.int64)
    coef = np.full((G, p), np.nan)
    se = np.full((G, p), np.nan)
    bad = np.zeros(G, dtype=np.int64)
    cov = np.full((G, p, p), np.nan) if output_cov else None
    opts = (int(max_iter), float(tol), nonneg is True or nonneg is np.True_, _ZERO_TOL)
    blocks = range(0, G, _FIT_BLOCK)
    show = len(blocks) > 2 if progress is None else bool(progress)
    for a in tqdm(blocks, disable=not show, desc="lmm", unit="block"):
        g = slice(a, min(G, a + _FIT_BLOCK))
        if prob.eigen:
            res = _k.fit_k1(
                prob.W[g], prob.yRy[g], prob.lam, prob.mu_t, prob.mu_max, prob.n_eff,
                prob.ll_const, start[g], *opts, s.Ynorm[g],
            )  # fmt: skip
        else:
            res = _k.fit_general(
                prob.W[g], prob.yRy[g], prob.S, prob.Ws, prob.Wz, prob.blocks, K, prob.reml,
                prob.n_eff, prob.ll_const, start[g], *opts, s.Ynorm[g],
            )  # fmt: skip
        for out, value in zip((theta, score, info, loglik, niter, status), res, strict=True):
            out[g] = value
        ok = ~np.isin(status[g], _FAILED)
        if prob.eigen:
            _fixed_effects_eigen(s, prob, theta, ok, g, coef, se, bad, cov)
        else:
            c, v, e, b_ = _k.fixed_effects_general(
                theta[g], ok, prob.blocks, prob.Wz, np.ascontiguousarray(s.ZX),
                np.ascontiguousarray(s.ZY.T[g]), s.XX, np.ascontiguousarray(s.XY.T[g]),
                bool(output_cov),
            )  # fmt: skip
            coef[g], se[g], bad[g] = c, e, b_
            if output_cov:
                cov[g] = v

    # C = σ²XᵀV⁻¹X not PD: no usable β̂ (a pd_boundary gene keeps its more telling status)
    status = np.where(
        (bad == 1) & (status != _status.PD_BOUNDARY), _status.NOT_POSITIVE_DEFINITE, status
    )
    refitted = np.zeros(G, dtype=bool)
    if nonneg == _REFIT:
        tried = np.flatnonzero(np.isin(status, _REFIT_STATUSES))
        if tried.size:
            start_sub = None if theta0 is None else start[tried]
            sub = _fit(s.subset_genes(tried), method, engine, max(max_iter, _REFIT_MAX_ITER), tol,
                       start_sub, True, output_cov, False, False)  # fmt: skip
            keep = sub.converged  # a refit that fails too leaves the first fit's outcome
            idx = tried[keep]
            refitted[idx] = True
            theta[idx], score[idx], info[idx] = (
                sub.theta[keep],
                sub.dlogL[keep],
                sub.fim_theta[keep],
            )
            loglik[idx], niter[idx] = sub.loglik[keep], niter[idx] + sub.niter[keep]
            coef[idx], se[idx] = sub.coef[keep], sub.se[keep]
            status[idx] = [STATUS_NAMES.index(name) for name in sub.status[keep]]
            bad[idx] = 0
            if output_cov:
                cov[idx] = sub.cov[keep]
    failed = np.isin(status, _FAILED)
    theta[failed] = np.nan
    score[failed] = np.nan
    info[failed] = np.nan
    loglik[failed] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        tval = coef / se
    df = float(n_ - p)
    pval = t_two_sided(tval, df)
    se_theta = _k.inverse_information_diagonal(info)
    converged = np.isin(status, (_status.OK, _status.BOUNDARY))
    status_names = np.asarray(STATUS_NAMES, dtype=object)[status]
    boundary = (theta[:, :K] == 0.0) & (status == _status.BOUNDARY)[:, None]

    if warn and not converged.all():
        counts = pd.Series(status_names[~converged]).value_counts()
        detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
        warnings.warn(
            f"{int((~converged).sum())} of {G} genes did not converge ({detail}); "
            "see LmmFit.status and LmmFit.converged",
            ConvergenceWarning,
            stacklevel=4,
        )

    return LmmFit(
        coef=coef,
        se=se,
        t=tval,
        p_value=pval,
        df=df,
        cov=cov,
        theta=theta,
        se_theta=se_theta,
        fim_theta=info,
        dlogL=score,
        loglik=loglik,
        niter=niter,
        converged=converged,
        status=status_names,
        method=method,
        nonneg=nonneg if nonneg == _REFIT else bool(nonneg),
        boundary=boundary,
        refitted=refitted,
        n=n_,
        d=np.asarray(s.d),
        fixed_names=list(s.fixed_names),
        theta_names=_theta_names(s),
        gene_names=list(s.gene_names),
        stats=s,
        _prepared=_Prepared(s, method, prob),
    )


def prepared(fit: LmmFit) -> _Prepared:
    """The problem ``fit`` was computed from: the one it kept, or (for a fit that kept none,
    or whose ``stats`` or ``method`` were replaced since) one built afresh."""
    p = fit._prepared
    if p is not None and p.stats is fit.stats and p.method == fit.method:
        return p
    if fit.stats is None:
        raise ValueError("fit: this LmmFit carries no summary statistics (fit.stats is None)")
    return _Prepared(fit.stats, fit.method, _Problem.build(fit.stats, fit.method, "auto"))


def _theta_names(s: SummaryStats) -> list[str]:
    """The block labels then ``"residual"``; ``var1, …`` when the statistics carry no labels
    (FLASHMM-style matrices)."""
    if s.random_blocks:
        return [*s.random_blocks, "residual"]
    return [f"var{k + 1}" for k in range(len(s.d))] + ["residual"]


def lmmfit(
    Y,
    X,
    Z=None,
    d=None,
    *,
    transform: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    gene_names=None,
    **kwargs,
) -> LmmFit:
    """:func:`summary_stats` then :func:`lmm`; ``kwargs`` go to :func:`lmm`.

    ``X`` may be a :class:`~pyflashmm.Design` (then without ``Z`` and ``d``), as for
    :func:`summary_stats`.
    """
    if not isinstance(X, Design) and hasattr(X, "shape") and len(X.shape) == 2 and X.shape[0] > 0:
        # the rank first, before the pass over Y (a Design was checked when it was built)
        Xd = _checks.as_float_matrix("X", X)
        names = [str(c) for c in X.columns] if isinstance(X, pd.DataFrame) else None
        _checks.check_full_rank(Xd.T @ Xd, _checks.check_names("X", names, Xd.shape[1], "x"))
    stats = summary_stats(
        Y, X, Z, d, transform=transform, chunk_size=chunk_size, gene_names=gene_names
    )
    return lmm(stats, **kwargs)
