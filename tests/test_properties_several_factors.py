"""Property tests with several grouping factors against a dense brute-force oracle (issue 12).

Random designs (``hypothesis``, derandomised so CI is deterministic): two factors, crossed
(levels assigned at random, unbalanced) or nested (each inner level inside one outer
level, 1 to 4 rows each); a random slope on neither, either or both factors, on a
covariate that is uncentred and badly scaled (``10^k (c + N(0, 1))``, ``|k| <= 3``,
``0 <= c <= 30``); each term's true variance zero or ``10^[-2, 2]`` times the residual
variance; REML and ML; each slope term diagonal or unstructured on its own (``cov_type``
a dict). Every fit must

* not crash and leak no numpy warning,
* have the log-likelihood of the n x n multivariate normal density at its own estimates
  (``tests/_dense.py``'s ``DenseTermsDeviance``, no code shared with the package), with
  the GLS fixed effects,
* keep its diagonal terms diagonal,
* reach the dense likelihood's maximum: no start of L-BFGS-B on the dense profiled
  deviance (the fit's own estimates, the identity, a small start, random starts) finds a
  log-likelihood more than 1e-6 above the fit's.

As in ``test_properties.py``, there are more rows than fixed and random effects together.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from _dense import DenseTermsDeviance, TermsDesign, make_terms_design
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mixedlm_sklearn import MixedLMRegressor


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Case:
    design: TermsDesign
    reml: bool

    @property
    def cov_type(self) -> dict:
        return {name: "diagonal" if diagonal else "unstructured"
                for name, _, _, diagonal in self.design.factors}

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        d = self.design
        terms = [(name, int(codes.max()) + 1, Z.shape[1], diagonal) for name, codes, Z, diagonal in d.factors]
        return f"Case(n={len(d.y)}, terms={terms}, reml={self.reml})"


@st.composite
def cases(draw) -> Case:
    nested = draw(st.booleans())
    m_a = draw(st.integers(2, 8))
    m_b = draw(st.integers(2, 3) if nested else st.integers(2, 8))
    slopes = draw(st.sampled_from(["none", "a", "b", "both"]))
    # a true variance of zero for one term in four (small true variances and few levels
    # give singular fits often enough besides)
    log_ratios = tuple(draw(st.integers(0, 3).flatmap(lambda k: st.none() if k == 0 else st.floats(-2.0, 2.0)))
                       for _ in range(2))
    diagonal = (draw(st.booleans()), draw(st.booleans()))
    x_scale = 10.0 ** draw(st.floats(-3.0, 3.0))
    x_shift = draw(st.floats(0.0, 30.0))
    reml = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    n_blocks = m_a * m_b if nested else draw(st.integers(4, 12))
    sizes = draw(st.lists(st.integers(1, 4) if nested else st.integers(3, 8),
                          min_size=n_blocks, max_size=n_blocks))
    # more rows than fixed and random effects together (3 fixed effects)
    q_a, q_b = 1 + (slopes in ("a", "both")), 1 + (slopes in ("b", "both"))
    n_b = m_a * m_b if nested else m_b
    need = m_a * q_a + n_b * q_b + 3 + 2
    sizes[0] += max(0, need - sum(sizes))
    return Case(make_terms_design(nested, m_a, m_b, sizes, slopes, log_ratios, diagonal, x_scale,
                                  x_shift, seed), reml)


def _fit(case: Case) -> tuple[MixedLMRegressor, list]:
    d = case.design
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = MixedLMRegressor(reml=case.reml, cov_type=case.cov_type).fit(
            pd.DataFrame(d.X, columns=["x", "w"]), d.y, groups=pd.DataFrame(d.groups),
            Z={name: Z for name, Z in d.Z.items() if Z.shape[1] > 1})
    return est, caught


def test_dense_terms_deviance_is_the_multivariate_normal_density():
    """The oracle checked against scipy's density and its own finite differences."""
    from scipy import stats

    d = make_terms_design(False, 4, 3, [6] * 5, "both", (0.3, -0.5), (False, True), 20.0, 5.0, 3)
    for reml in (False, True):
        dense = DenseTermsDeviance(d, reml)
        theta = np.array([0.7, -0.02, 0.03, 0.4, 0.05])  # a: (L00, L10, L11), b: diagonal (L00, L11)
        value, grad = dense.value_and_grad(theta)
        # at the profiled scale and GLS beta, -dev/2 is the density (REML: plus its term)
        n, p = len(d.y), 3
        V0 = np.eye(n)
        for (_, codes, Z, _), L in zip(d.factors, dense.lams(theta)):
            V0 += (codes[:, None] == codes[None, :]) * (Z @ L @ L.T @ Z.T)
        Xf = d.X_full
        beta = np.linalg.solve(Xf.T @ np.linalg.solve(V0, Xf), Xf.T @ np.linalg.solve(V0, d.y))
        r = d.y - Xf @ beta
        scale = r @ np.linalg.solve(V0, r) / (n - p if reml else n)
        llf = stats.multivariate_normal(Xf @ beta, scale * V0).logpdf(d.y)
        if reml:
            llf += 0.5 * p * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(Xf.T @ np.linalg.solve(scale * V0, Xf))[1]
        assert -0.5 * value == pytest.approx(llf, rel=1e-11)
        covs = [scale * L @ L.T for L in dense.lams(theta)]
        assert dense.loglik(covs, scale)[0] == pytest.approx(llf, rel=1e-11)
        h = 1e-6
        numeric = [(dense(theta + h * e) - dense(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-4)


@_settings(30)
@given(cases())
def test_several_factors_reach_the_dense_maximum(case):
    d = case.design
    est, caught = _fit(case)
    leaked = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not leaked

    dense = DenseTermsDeviance(d, case.reml)
    covs = [np.atleast_2d(est.cov_re_[name]) for name, _, _, _ in d.factors]
    # the fit's log-likelihood is the dense one at its own estimates, beta the GLS estimate
    llf, gls = dense.loglik(covs, est.scale_)
    np.testing.assert_allclose(est.llf_, llf, rtol=1e-8)
    beta = est.fe_params_.to_numpy()
    np.testing.assert_allclose(beta, gls, rtol=1e-6, atol=1e-8 * np.abs(gls).max())
    for (name, _, Z, diagonal), cov in zip(d.factors, covs):
        assert cov.shape == (Z.shape[1],) * 2
        if diagonal:
            assert cov[0, 1] == cov[1, 0] == 0.0
        assert np.linalg.eigvalsh(cov).min() >= -1e-10 * max(np.abs(cov).max(), 1e-300)

    # nobody finds a higher likelihood
    best = dense.multistart_min([dense.theta_of(covs, est.scale_)])
    assert -0.5 * best <= est.llf_ + 1e-6, (-0.5 * best - est.llf_, est.converged_, est.singular_)


# ---- a failure found by a wider random search (300 non-derandomised examples) ---------------------

def _literal_two_boundary_faces() -> Case:
    """15 rows, ``y ~ x + w + (1 | a) + (x | b)``, REML; ``b`` happens to be nested in ``a``
    (2 levels) and ``x`` is uncentred (13.7 to 17.3)."""
    x = np.array([16.12, 15.87, 16.64, 16.1, 15.46, 16.36, 17.3, 16.94, 15.29, 14.73, 15.37, 16.04, 13.67,
                  15.78, 14.75])
    w = np.array([-23.23, -4.43, 18.37, 91.16, 154.25, 37.15, 186.65, -16.52, 85.15, 140.35, 59.4, -24.35,
                  -42.17, 4.23, 72.02])
    y = np.array([20.94, 21.32, 21.7, 21.07, 19.21, 21.01, 22.39, 23.4, 18.66, 20.69, 30.04, -3.44, -11.68,
                  -15.16, -12.26])
    a = np.repeat([0, 1], [11, 4])
    b = np.repeat([0, 1, 2, 3], [10, 1, 1, 3])
    factors = [("a", a, np.ones((15, 1)), False), ("b", b, np.column_stack([np.ones(15), x]), False)]
    return Case(TermsDesign(np.column_stack([x, w]), y, factors), reml=True)


def test_two_boundary_faces_reach_the_better_one():
    """The search used to stop on one boundary face (var(a) = 307, corr(b) = -1; log L =
    -34.44696, reported converged) while the maximum is on another (var(a) = 0, corr(b) =
    -1), 0.088 log-lik units higher: it now also starts from each face where one term is
    absent (``_optimize._face_starts``)."""
    case = _literal_two_boundary_faces()
    est, _ = _fit(case)
    # lme4: lmer(y ~ x + w + (1 | a) + (x | b), REML = TRUE) gives logLik -34.3587028276
    assert est.llf_ >= -34.3587028276 - 1e-6
    dense = DenseTermsDeviance(case.design, True)
    covs = [np.atleast_2d(est.cov_re_[name]) for name in ("a", "b")]
    assert -0.5 * dense.multistart_min([dense.theta_of(covs, est.scale_)]) <= est.llf_ + 1e-6


# ---- more failures of the wider search (2,400 non-derandomised examples) ----------------------

def _saved_cases() -> list[Case]:
    """Designs kept in ``data/several_factor_faces.json`` (as the search drew them)."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "data" / "several_factor_faces.json"
    cases = []
    for c in json.loads(path.read_text()):
        factors = [(f["name"], np.array(f["codes"]), np.array(f["Z"]), f["diagonal"]) for f in c["factors"]]
        cases.append(Case(TermsDesign(np.array(c["X"]), np.array(c["y"]), factors), c["reml"]))
    return cases


def _shortfall(case: Case) -> float:
    est, _ = _fit(case)
    dense = DenseTermsDeviance(case.design, case.reml)
    covs = [np.atleast_2d(est.cov_re_[name]) for name, _, _, _ in case.design.factors]
    return -0.5 * dense.multistart_min([dense.theta_of(covs, est.scale_)]) - est.llf_


@pytest.mark.parametrize("index", [0, 1])
def test_the_vanished_effect_can_be_another(index):
    """ML, slopes on both factors, the second term diagonal. Case 0 (35 rows) stopped with
    b's intercept variance at 0 and its slope's > 0, 0.438 log-lik units below the maximum
    (b's slope at 0, its intercept > 0, a's correlation -1); case 1 (19 rows) with b's slope
    at 0 and a non-singular, 0.0135 below the maximum (a's correlation +1, b's slope > 0).
    Both reported converged. The search now also starts with a term's vanished effects
    raised and with the vanished and the present effect swapped."""
    assert _shortfall(_saved_cases()[index]) <= 1e-6


@pytest.mark.xfail(strict=True, reason=(
    "50 rows, two scalar terms, REML: both variances nearly 0 (the maximum has var(a) = "
    "2e-4 scale units); the fit stops at var(a) = 1.3e-6 in a flat valley, 3.6e-6 log-lik "
    "units short, and reports converged=False (Hessian not positive definite)"))
def test_flat_valley_next_to_zero_variances():
    assert _shortfall(_saved_cases()[2]) <= 1e-6
