"""Per-step solvers of the gradient-level methods, as jnp code with bounded iterations.

Each works on the Gram matrix of the task gradients of the shared parameters, `gram[i, j] = g_i . g_j`
(`[K, K]`, float32), so it runs inside the jitted step at a cost independent of the model's size, on
every device the same (the Gram matrix is computed from gradients summed over devices). No host round
trip, no scipy or cvxpy. Each returns coefficients `[K]`: the shared update is sum_k c_k g_k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-8
ZERO_GRADIENT = 1e-12  # a task gradient whose squared norm is below this times the largest is zero


def active_tasks(gram: jax.Array) -> jax.Array:
  """`[K]` bool: the tasks whose gradient is not zero (squared norm above `ZERO_GRADIENT` times the
  largest). A task without valid pixels in a batch has a zero loss and gradient there."""
  d = jnp.diag(gram).astype(jnp.float32)
  return d > jnp.maximum(ZERO_GRADIENT * jnp.max(d), 0.0)


def decoupled(gram: jax.Array, active: jax.Array) -> jax.Array:
  """`gram` with each inactive task's gradient replaced by one orthogonal to every other
  (of the largest gradient's norm, for conditioning).

  The weight equations of Nash-MTL, FairGrad and IMTL-G have no finite solution for a zero
  gradient (G alpha = 1 / alpha asks (G alpha)_k = 0 = 1 / alpha_k); an orthogonal stand-in
  decouples that task, so the active tasks' weights are exactly the solution of the problem without it.
  """
  gram = gram.astype(jnp.float32)
  largest = jnp.max(jnp.diag(gram))
  stand_in = jnp.eye(gram.shape[0], dtype=jnp.float32) * jnp.where(largest > 0, largest, 1.0)
  return jnp.where(active[:, None] & active[None, :], gram, stand_in)


def project_to_simplex(y: jax.Array) -> jax.Array:
  """The Euclidean projection of `y` `[K]` onto {x >= 0, sum x = 1} (sort-based, exact)."""
  k = y.shape[0]
  s = jnp.sort(y)[::-1]
  cumulative = jnp.cumsum(s) - 1.0
  index = jnp.arange(1, k + 1, dtype=y.dtype)
  active = s - cumulative / index > 0
  rho = jnp.max(jnp.where(active, jnp.arange(k), 0))
  theta = cumulative[rho] / (rho + 1.0)
  return jnp.maximum(y - theta, 0.0)


def _accelerated_on_simplex(objective, start: jax.Array, step: jax.Array,
                            iterations: int) -> jax.Array:
  """min of a convex `objective` over the simplex: `iterations` steps of accelerated projected
  gradient (FISTA) of size `step` (1 / the gradient's Lipschitz constant) from `start`."""
  grad = jax.grad(objective)

  def body(_, carry):
    w, z, t = carry
    new_w = project_to_simplex(z - step * grad(z))
    new_t = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
    return new_w, new_w + ((t - 1.0) / new_t) * (new_w - w), new_t

  w, _, _ = jax.lax.fori_loop(0, iterations, body, (start, start, jnp.float32(1.0)))
  return w


def min_norm_weights(gram: jax.Array, iterations: int = 500) -> jax.Array:
  """MGDA's min-norm point: argmin_{w in simplex} |sum_k w_k g_k|^2 = w' G w, `[K]`.

  As Sener & Koltun's solver (MGDA-UB) starts: from the best pair of tasks (the min-norm point of
  each segment in closed form), exact for K = 2; then, for K > 2, `iterations` steps of accelerated
  projected gradient with step 1 / (2 lambda_max(G)) (their code moves by projected gradient steps
  with a line search; this converges faster in the conflicting cases).
  """
  k = gram.shape[0]
  gram = gram.astype(jnp.float32)
  d = jnp.diag(gram)
  gi, gj = d[:, None], d[None, :]
  gamma = (gj - gram) / jnp.maximum(gi + gj - 2.0 * gram, EPS)  # weight of g_i on segment (i, j)
  gamma = jnp.where(gram >= gi, 1.0, jnp.where(gram >= gj, 0.0, gamma))
  cost = gamma ** 2 * gi + 2 * gamma * (1 - gamma) * gram + (1 - gamma) ** 2 * gj
  cost = jnp.where(jnp.triu(jnp.ones((k, k), bool), 1), cost, jnp.inf)
  i, j = jnp.unravel_index(jnp.argmin(cost), (k, k))
  start = jnp.zeros(k).at[i].set(gamma[i, j]).at[j].add(1.0 - gamma[i, j])
  if k < 3:
    return start
  step = 1.0 / jnp.maximum(2.0 * jnp.linalg.eigvalsh(gram)[-1], EPS)
  return _accelerated_on_simplex(lambda w: w @ gram @ w, start, step, iterations)


def orthogonal_start(gram: jax.Array, exponent: float = 1.0) -> jax.Array:
  """The solution of `bargaining_weights` for orthogonal gradients: G_kk alpha_k = alpha_k^-exponent."""
  return jnp.maximum(jnp.diag(gram), EPS) ** (-1.0 / (1.0 + exponent))


def bargaining_weights(gram: jax.Array, exponent: float = 1.0, start: jax.Array | None = None,
                       iterations: int = 30) -> jax.Array:
  """alpha > 0 with (G alpha)_k = alpha_k^(-exponent) for every task k, `[K]`.

  exponent 1: Nash-MTL's bargaining solution (G alpha = 1 / alpha); exponent 1 / a: FairGrad's
  alpha-fair solution. A task with a zero gradient gets alpha_k = 0 (it has no finite solution and
  contributes nothing); the others solve the problem without it (`decoupled`). The root is the
  minimiser of the strictly convex
      f(alpha) = alpha' G alpha / 2 - sum_k h(alpha_k),   h'(alpha) = alpha^(-exponent),
  found by `iterations` damped Newton steps (Hessian G + exponent diag(alpha^(-exponent - 1))):
  the step is scaled by 1 / (1 + Newton decrement), which keeps alpha positive and converges for
  the self-concordant Nash case, and never crosses more than half the distance to alpha = 0. From
  `start` (the previous step's solution) where it is positive, elsewhere from the orthogonal
  case's solution.
  """
  k = gram.shape[0]
  active = active_tasks(gram)
  gram = decoupled(gram, active)
  alpha = orthogonal_start(gram, exponent)
  if start is not None:
    alpha = jnp.where(start > 0, start, alpha)

  def body(_, alpha):
    gradient = gram @ alpha - alpha ** (-exponent)
    hessian = gram + jnp.diag(exponent * alpha ** (-exponent - 1.0))
    hessian = hessian + 1e-7 * jnp.trace(hessian) / k * jnp.eye(k)
    step = jnp.linalg.solve(hessian, gradient)
    decrement = jnp.sqrt(jnp.maximum(gradient @ step, 0.0))
    boundary = jnp.min(jnp.where(step > 0, 0.5 * alpha / jnp.maximum(step, EPS), jnp.inf))
    t = jnp.minimum(1.0 / (1.0 + decrement), boundary)
    return alpha - t * step

  return jnp.where(active, jax.lax.fori_loop(0, iterations, body, alpha), 0.0)


def cagrad_weights(gram: jax.Array, c: float = 0.4, iterations: int = 200) -> jax.Array:
  """CAGrad's dual: w = argmin_{w in simplex} w' G b + sqrt(c^2 |g0|^2) sqrt(w' G w), with b the
  uniform weights and g0 = G-mean gradient. Accelerated projected gradient (FISTA) on the simplex
  with step 1 / L from a bound of the curvature, `iterations` steps. Returns the coefficients of the
  update g0 + lambda g_w / (1 + c^2), lambda = c |g0| / |g_w| (Liu et al.'s rescale = 1)."""
  k = gram.shape[0]
  gram = gram.astype(jnp.float32)
  b = jnp.full(k, 1.0 / k)
  g0_norm = jnp.sqrt(jnp.mean(gram) + EPS)
  scale = c * g0_norm + EPS

  def objective(w):
    return w @ gram @ b + scale * jnp.sqrt(w @ gram @ w + EPS)

  # Curvature of the square root term is at most |G| / sqrt(w'Gw): bounded below by a floor.
  smallest = jnp.min(jnp.diag(gram)) / k + EPS
  lipschitz = scale * jnp.trace(gram) / jnp.sqrt(smallest)
  step = 1.0 / jnp.maximum(lipschitz, EPS)
  w = _accelerated_on_simplex(objective, b, step, iterations)
  gw_norm = jnp.sqrt(w @ gram @ w + EPS)
  lam = scale / gw_norm
  return (b + lam * w) / (1.0 + c ** 2)


def imtl_weights(gram: jax.Array) -> jax.Array:
  """IMTL-G (Liu et al. 2021): the weights alpha (sum 1) whose combination g = sum alpha_k g_k has
  equal projections onto every task's unit gradient u_k. Closed form from the Gram matrix:
  D = g_1 - g_k and U = u_1 - u_k (k >= 2); alpha_{2..K} = g_1 U' (D U')^-1, alpha_1 = 1 - sum.
  A task with a zero gradient (no direction to project on) gets 0; the others solve the problem
  without it (`decoupled`, then the active weights rescaled to sum 1)."""
  active = active_tasks(gram)
  gram = decoupled(gram, active)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), EPS))
  gu = gram / norms[None, :]  # gu[i, k] = g_i . u_k
  g1_u = gu[0, 0] - gu[0, 1:]  # g_1 . U_k
  # (D U')[i, k] = (g_1 - g_i) . (u_1 - u_k), i, k >= 2
  d_u = (gu[0, 0] - gu[0, 1:][None, :] - gu[1:, 0][:, None] + gu[1:, 1:])
  rest = jnp.linalg.solve(d_u.T, g1_u)  # alpha_rest (D U') = g1_u  <=>  (D U')' alpha' = g1_u'
  alpha = jnp.where(active, jnp.concatenate([1.0 - jnp.sum(rest, keepdims=True), rest]), 0.0)
  return alpha / jnp.where(jnp.any(active), jnp.sum(alpha), 1.0)


def aligned_weights(gram: jax.Array) -> jax.Array:
  """Aligned-MTL (Senushkin et al. 2023): coefficients making the task gradients' system orthogonal
  and equally scaled by the smallest singular value. With G = V L V' (eigenvalues above a rank
  tolerance), B = sqrt(l_min) V L^-1/2 V' and the coefficients are B's column sums."""
  gram = gram.astype(jnp.float32)
  k = gram.shape[0]
  lam, vectors = jnp.linalg.eigh(gram)
  tolerance = jnp.max(lam) * k * jnp.finfo(jnp.float32).eps
  keep = lam > tolerance
  smallest = jnp.min(jnp.where(keep, lam, jnp.inf))
  inverse_root = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
  b = jnp.sqrt(smallest) * (vectors * inverse_root[None, :]) @ vectors.T
  return jnp.sum(b, axis=0)


def pcgrad_coefficients(gram: jax.Array, key: jax.Array) -> jax.Array:
  """PCGrad (Yu et al. 2020) as a combination of the original gradients: each task's gradient g_i,
  in a random order of the others, loses its component along every g_j it conflicts with
  (g_i' . g_j < 0); the update is sum_i g_i'. Every g_i' stays a combination of the g_j, so its
  coefficients `[K, K]` are tracked through the Gram matrix; returns their column sums `[K]`."""
  k = gram.shape[0]
  gram = gram.astype(jnp.float32)
  orders = jax.vmap(lambda key: jax.random.permutation(key, k))(jax.random.split(key, k))

  def project_task(i, order):
    def body(n, coefficients):
      j = order[n]
      g_ij = coefficients @ gram[:, j]  # g_i' . g_j
      conflict = g_ij < 0
      return coefficients - jnp.where(conflict, g_ij / (gram[j, j] + EPS), 0.0) * jax.nn.one_hot(j, k)
    return jax.lax.fori_loop(0, k, body, jax.nn.one_hot(i, k))

  return jnp.sum(jax.vmap(project_task)(jnp.arange(k), orders), axis=0)
