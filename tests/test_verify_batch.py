"""Theorem 4.1 over a batch of seeded instances in one vmapped call."""

import numpy as np

from mlverify import verify


def test_batched_check_matches_closed_form_constants_and_loop():
    objectives_of, params, members = verify.quadratic_family_batch(3, (1, 1, 1), seeds=range(6))
    report = verify.theorem_4_1_batch(objectives_of, params, (1, 1, 1), box=(-2, 2), T=30,
                                      grid_points=3)
    assert report.counts() == {"pass": 6}
    exact_L = np.array([1.01 * np.linalg.eigvalsh(m.hessian_F1())[-1] for m in members])
    # Central differences of an affine hypergradient are exact up to round-off.
    np.testing.assert_allclose(report.L, exact_L, rtol=1e-8)
    assert np.all(report.residual < 1e-12)
    loop = verify.theorem_4_1_batch(objectives_of, params, (1, 1, 1), box=(-2, 2), T=30,
                                    grid_points=3, vectorize=False)
    np.testing.assert_allclose(loop.worst_ratio, report.worst_ratio, rtol=1e-12)
    assert "6 instances" in report.summary()
