"""Bounded nonlinear least squares (Levenberg-Marquardt), for `substrates.emulated.fit`.

Small and deterministic, because scipy is not a dependency: a fit has a handful of parameters
and a few dozen residuals, each costing one prediction of the performance model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["least_squares"]


def _jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, r: np.ndarray,
              lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # fmt: skip
    step = 1e-4
    columns = []
    for i in range(len(x)):
        h = step if x[i] + step <= hi[i] else -step
        moved = x.copy()
        moved[i] += h
        columns.append((f(moved) - r) / h)
    return np.array(columns).T if columns else np.zeros((len(r), 0))


def least_squares(
    f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise ``sum(f(x)**2)`` with ``lo <= x <= hi``, starting from ``x0``.

    Levenberg-Marquardt with Marquardt's diagonal scaling and a forward-difference Jacobian;
    a step leaving the box is clipped to it. Deterministic.

    Args:
        f: the residuals at a point.
        x0: the start.
        lo: lower bounds.
        hi: upper bounds.

    Returns:
        The point, its residuals and the Jacobian there (rows: residuals; columns: ``x``).
    """
    x, r = x0.copy(), f(x0)
    cost, damping = float(r @ r), 1e-3
    jac = _jacobian(f, x, r, lo, hi)
    for _ in range(50):
        a, g = jac.T @ jac, jac.T @ r
        scale = np.diag(a) + 1e-9 + 1e-6 * float(np.max(np.diag(a), initial=0.0))
        while damping < 1e10:
            step = np.linalg.solve(a + damping * np.diag(scale), -g)
            trial = np.clip(x + step, lo, hi)
            r_trial = f(trial)
            cost_trial = float(r_trial @ r_trial)
            if cost_trial < cost:
                break
            damping *= 4.0
        else:
            break
        # converged: a step under 1e-5 in log space (0.001%) or a cost gain under 1e-6 of it
        small = float(np.max(np.abs(trial - x))) < 1e-5
        done = small or cost - cost_trial <= 1e-6 * max(cost, 1e-30)
        x, r, cost, damping = trial, r_trial, cost_trial, max(damping / 3.0, 1e-9)
        jac = _jacobian(f, x, r, lo, hi)
        if done:
            break
    return x, r, jac
