"""Matrix-free estimators: Hutchinson traces and Lanczos extreme eigenvalues."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def hutchinson(quad: Callable[[jax.Array], jax.Array], dim: int, key: jax.Array, n_probes: int):
    """Hutchinson trace estimate ``mean_k v_k^T A v_k`` with Rademacher probes.

    Its variance is ``2 * sum_{i != j} A_ij**2 / n_probes`` for symmetric ``A``.

    Args:
      quad: maps probes ``[n_probes, dim]`` to their quadratic forms ``[n_probes]``.
      dim: dimension of ``A``.
      key: PRNG key of the probes.
      n_probes: number of probes (static).

    Returns:
      The scalar estimate of ``Tr(A)``.
    """
    vs = jax.random.rademacher(key, (n_probes, dim), jnp.float32)
    return jnp.mean(quad(vs))


def lanczos_tridiag(
    matvec: Callable[[jax.Array], jax.Array], dim: int, key: jax.Array, n_iters: int
) -> tuple[jax.Array, jax.Array]:
    """Lanczos tridiagonalisation with full reorthogonalisation.

    Runs ``m = min(n_iters, dim)`` steps from a random unit start vector.  At
    each step the new vector is orthogonalised twice against all previous ones
    (classical Gram-Schmidt, twice is enough).  On breakdown (the Krylov space
    is invariant) it restarts with a fresh random vector orthogonal to the
    basis and a zero off-diagonal, so the eigenvalues of ``T`` stay Ritz values.

    Args:
      matvec: symmetric linear map ``v -> A v`` on ``[dim]`` vectors.
      dim: dimension.
      key: PRNG key of the start (and restart) vectors.
      n_iters: number of Lanczos steps (static).

    Returns:
      ``(alpha [m], beta [m - 1])``: diagonal and off-diagonal of ``T``.
    """
    m = min(int(n_iters), int(dim))
    basis = jnp.zeros((m + 1, dim), jnp.float32)
    v0 = jax.random.normal(jax.random.fold_in(key, 0), (dim,), jnp.float32)
    basis = basis.at[0].set(v0 / jnp.linalg.norm(v0))

    def orthogonalize(w, basis, j):
        keep = (jnp.arange(m + 1) <= j)[:, None]
        for _ in range(2):
            w = w - (basis * keep).T @ ((basis * keep) @ w)
        return w

    def step(j, carry):
        basis, alpha, beta = carry
        v = basis[j]
        av = matvec(v)
        a = jnp.vdot(v, av)
        w = orthogonalize(av, basis, j)
        b = jnp.linalg.norm(w)
        # Breakdown: restart with a random vector orthogonal to the basis.
        broke = b <= 1e-6 * jnp.linalg.norm(av)
        r = jax.random.normal(jax.random.fold_in(key, j + 1), (dim,), jnp.float32)
        r = orthogonalize(r, basis, j)
        r = r / jnp.maximum(jnp.linalg.norm(r), 1e-30)
        nxt = jnp.where(broke, r, w / jnp.where(broke, 1.0, b))
        return (
            basis.at[j + 1].set(nxt),
            alpha.at[j].set(a),
            beta.at[j].set(jnp.where(broke, 0.0, b)),
        )

    init = (basis, jnp.zeros((m,), jnp.float32), jnp.zeros((m,), jnp.float32))
    _, alpha, beta = jax.lax.fori_loop(0, m, step, init)
    return alpha, beta[: m - 1]


def tridiag_eigvalsh(alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """Eigenvalues (ascending) of the symmetric tridiagonal matrix ``(alpha, beta)``."""
    t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
    return jnp.linalg.eigvalsh(t)


def lanczos_top_eig(matvec, dim: int, key: jax.Array, n_iters: int) -> jax.Array:
    """Largest Ritz value of ``matvec`` after ``n_iters`` Lanczos steps."""
    alpha, beta = lanczos_tridiag(matvec, dim, key, n_iters)
    return tridiag_eigvalsh(alpha, beta)[-1]
