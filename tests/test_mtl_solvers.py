"""The gradient-level methods' solvers against independent solutions computed here with numpy and
scipy on random task gradients (K = 2, 3, 5; random, conflicting and aligned), and the loss-level
methods against hand-worked values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from mtan_jax import tasks as tasks_lib
from mtan_jax import weighting as weighting_lib
from mtan_jax.weighting import base
from mtan_jax.weighting import solvers

NYU = tasks_lib.dataset_tasks("nyuv2")


def task_gradients(k, kind, seed=0, n=40):
  """`[K, n]` gradients: independent; pairwise conflicting (alternating signs of one direction);
  or aligned (one direction, different lengths), with some noise."""
  rng = np.random.default_rng(seed + 10 * k)
  if kind == "random":
    return rng.normal(size=(k, n))
  base_direction = rng.normal(size=n)
  sign = (lambda i: (-1) ** i) if kind == "conflicting" else (lambda i: 1)
  return np.stack([sign(i) * base_direction * (1 + i) + 0.3 * rng.normal(size=n)
                   for i in range(k)])


CASES = [(k, kind) for k in (2, 3, 5) for kind in ("random", "conflicting", "aligned")]


def on_simplex(objective, k):
  """scipy's SLSQP minimum of `objective` over the simplex."""
  result = minimize(objective, np.ones(k) / k, method="SLSQP", bounds=[(0, 1)] * k,
                    constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
                    options={"ftol": 1e-12, "maxiter": 1000})
  assert result.success or result.status == 8, result.message  # 8: no descent left at the optimum
  return result


@pytest.mark.parametrize("k,kind", CASES)
def test_mgda_finds_the_min_norm_point(k, kind):
  g = task_gradients(k, kind)
  gram = g @ g.T
  w = solvers.min_norm_weights(jnp.asarray(gram))
  chex.assert_shape(w, (k,))
  w = np.asarray(w)
  reference = on_simplex(lambda x: x @ gram @ x, k)
  assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
  # The min-norm value within 1e-6 of the largest squared gradient norm (float32 solver).
  assert w @ gram @ w - reference.fun <= 1e-6 * np.max(np.diag(gram)), (w, reference.x)


@pytest.mark.parametrize("k,kind", CASES)
def test_cagrad_solves_its_dual(k, kind):
  g = task_gradients(k, kind)
  gram, c = g @ g.T, 0.4
  b = np.ones(k) / k
  radius = c * np.sqrt(gram.mean() + 1e-8) + 1e-8
  reference = on_simplex(lambda x: x @ gram @ b + radius * np.sqrt(x @ gram @ x + 1e-8), k)
  w = reference.x
  expected = (g.mean(0) + radius / np.sqrt(w @ gram @ w + 1e-8) * (w @ g)) / (1 + c ** 2)
  coefficients = solvers.cagrad_weights(jnp.asarray(gram), c)
  chex.assert_shape(coefficients, (k,))
  ours = np.asarray(coefficients) @ g
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("k,kind", CASES)
@pytest.mark.parametrize("exponent", [1.0, 0.5, 2.0])  # Nash-MTL; FairGrad with alpha 2 and 0.5
def test_the_bargaining_solution_meets_its_condition(k, kind, exponent):
  g = task_gradients(k, kind)
  gram = g @ g.T
  alpha = solvers.bargaining_weights(jnp.asarray(gram), exponent)
  chex.assert_shape(alpha, (k,))
  alpha = np.asarray(alpha, np.float64)
  assert np.all(alpha > 0)
  residual = gram @ alpha - alpha ** (-exponent)
  assert np.max(np.abs(residual)) <= 1e-4 * np.max(alpha ** (-exponent)), residual


@pytest.mark.parametrize("k,kind", CASES)
def test_imtl_projects_equally_on_every_task(k, kind):
  g = task_gradients(k, kind)
  alpha = solvers.imtl_weights(jnp.asarray(g @ g.T))
  chex.assert_shape(alpha, (k,))
  alpha = np.asarray(alpha, np.float64)
  update = alpha @ g
  projections = g @ update / np.linalg.norm(g, axis=1)  # update . u_k
  assert abs(alpha.sum() - 1) < 1e-5
  np.testing.assert_allclose(projections, projections[0], rtol=2e-4)


@pytest.mark.parametrize("k,zero", [(2, 0), (3, 0), (3, 1), (5, 4)])
def test_a_task_with_a_zero_gradient_gets_no_weight_and_the_others_are_solved_without_it(k, zero):
  """A task without valid pixels in a batch has a zero gradient: Nash-MTL and FairGrad's
  G alpha = alpha^-e then has no finite solution, IMTL-G no direction for it. That task gets 0 and
  the others meet their conditions among themselves (checked in numpy on the active rows);
  MGDA's min-norm point is then the zero update, as its definition says; the rest stay finite."""
  g = task_gradients(k, "random")
  g[zero] = 0.0
  gram = jnp.asarray(g @ g.T)
  active = np.arange(k) != zero
  a = g[active]
  for exponent in (1.0, 0.5):
    alpha = np.asarray(solvers.bargaining_weights(gram, exponent), np.float64)
    assert alpha[zero] == 0.0 and np.all(alpha[active] > 0), alpha
    residual = a @ a.T @ alpha[active] - alpha[active] ** (-exponent)
    assert np.max(np.abs(residual)) <= 1e-4 * np.max(alpha[active] ** (-exponent)), residual
  warm = solvers.bargaining_weights(gram, start=jnp.zeros(k).at[(zero + 1) % k].set(0.3))
  np.testing.assert_allclose(warm, solvers.bargaining_weights(gram), rtol=1e-4)
  alpha = np.asarray(solvers.imtl_weights(gram), np.float64)
  assert alpha[zero] == 0.0 and abs(alpha.sum() - 1) < 1e-5, alpha
  if k > 2:
    projections = a @ (alpha @ g) / np.linalg.norm(a, axis=1)
    np.testing.assert_allclose(projections, projections[0], rtol=2e-4)
  else:
    np.testing.assert_allclose(alpha[active], [1.0])
  assert np.linalg.norm(np.asarray(solvers.min_norm_weights(gram)) @ g) < 1e-6
  for coefficients in (solvers.cagrad_weights(gram), solvers.aligned_weights(gram),
                       solvers.pcgrad_coefficients(gram, jax.random.key(0))):
    assert np.all(np.isfinite(coefficients)), coefficients
  if k == len(NYU):  # the schemes as the step calls them: coefficients and logged weights
    for method in ("nash_mtl", "fairgrad", "imtl"):
      scheme = weighting_lib.build(method, NYU)
      c, w, _ = scheme.coefficients(gram, jnp.ones(k), scheme.init()[1])
      assert c[zero] == 0 and w[zero] == 0 and np.all(np.isfinite(c)), (method, c)


@pytest.mark.parametrize("k,kind", CASES)
def test_aligned_mtl_is_the_sum_of_the_aligned_gradients(k, kind):
  """From the SVD g = U S V': the aligned system is s_min U V' (orthogonal rows of equal norm)."""
  g = task_gradients(k, kind)
  u, s, vt = np.linalg.svd(g, full_matrices=False)
  expected = (s.min() * u @ vt).sum(0)
  coefficients = solvers.aligned_weights(jnp.asarray(g @ g.T))
  chex.assert_shape(coefficients, (k,))
  ours = np.asarray(coefficients, np.float64) @ g
  np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_pcgrad_on_a_hand_worked_conflict():
  """g1 = (1, 0), g2 = (-1, 1): g1 . g2 = -1 < 0, so g1' = g1 + g2 / 2 = (0.5, 0.5) and
  g2' = g2 + g1 = (0, 1); the update (0.5, 1.5) = 2 g1 + 1.5 g2."""
  g = np.array([[1.0, 0.0], [-1.0, 1.0]])
  c = np.asarray(solvers.pcgrad_coefficients(jnp.asarray(g @ g.T), jax.random.key(0)))
  np.testing.assert_allclose(c, [2.0, 1.5], rtol=1e-6)
  np.testing.assert_allclose(c @ g, [0.5, 1.5], rtol=1e-6)
  # No conflict: nothing is projected.
  aligned = np.array([[1.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(solvers.pcgrad_coefficients(jnp.asarray(aligned @ aligned.T),
                                                         jax.random.key(0)), [1.0, 1.0])


def test_pcgrad_with_three_tasks_follows_each_tasks_random_order():
  """Three tasks: each g_i is projected against the others in the order its key draws; checked
  against a plain numpy PCGrad given the same orders."""
  g = task_gradients(3, "conflicting", seed=3)
  key = jax.random.key(7)
  orders = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, 3))(jax.random.split(key, 3)))
  projected = g.copy()
  for i in range(3):
    for j in orders[i]:
      dot = projected[i] @ g[j]
      if dot < 0:
        projected[i] -= dot / (g[j] @ g[j]) * g[j]
  c = np.asarray(solvers.pcgrad_coefficients(jnp.asarray(g @ g.T), key), np.float64)
  np.testing.assert_allclose(c @ g, projected.sum(0), rtol=1e-4)


def test_the_simplex_projection():
  for y in ([0.2, 0.3, 0.5], [2.0, 0.0, -1.0], [-1.0, -1.0, -1.0], [0.6, 0.6, 0.1]):
    ours = np.asarray(solvers.project_to_simplex(jnp.asarray(y, jnp.float32)))
    expected = on_simplex(lambda x, y=np.asarray(y): np.sum((x - y) ** 2), 3).x
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_gram_matrix_and_combination_over_a_pytree():
  rng = np.random.default_rng(0)
  grads = {"a": rng.normal(size=(3, 4, 5)), "b": {"c": rng.normal(size=(3, 7))}}
  flat = np.concatenate([grads["a"].reshape(3, -1), grads["b"]["c"]], axis=1)
  np.testing.assert_allclose(base.gram_matrix(jax.tree_util.tree_map(jnp.asarray, grads)),
                             flat @ flat.T, rtol=1e-5)
  c = np.array([0.5, -1.0, 2.0])
  combined = base.combine_gradients(jax.tree_util.tree_map(jnp.asarray, grads), jnp.asarray(c))
  chex.assert_shape([combined["a"], combined["b"]["c"]], [(4, 5), (7,)])
  np.testing.assert_allclose(combined["b"]["c"], c @ grads["b"]["c"], rtol=1e-5)


def test_gls_is_the_geometric_mean_and_its_weights_are_its_gradient():
  scheme = weighting_lib.build("gls", NYU)
  params, state = scheme.init()
  losses = {"segmentation": 2.0, "depth": 0.5, "normal": 0.25}
  total = scheme.total({k: jnp.float32(v) for k, v in losses.items()}, params, state)
  np.testing.assert_allclose(total, (2.0 * 0.5 * 0.25) ** (1 / 3), rtol=1e-6)
  state = scheme.observe(state, losses)
  gradient = jax.grad(lambda l: scheme.total(l, params, state))(
      {k: jnp.float32(v) for k, v in losses.items()})
  for name, weight in scheme.weights(params, state).items():  # d mean / d L_k = mean / (K L_k)
    np.testing.assert_allclose(weight, (0.25 ** (1 / 3)) / (3 * losses[name]), rtol=1e-5)
    np.testing.assert_allclose(gradient[name], weight, rtol=1e-5)


def test_rlw_draws_new_softmax_weights_every_step_from_its_state():
  scheme = weighting_lib.build("rlw", NYU)
  params, state = scheme.init()
  drawn = []
  for _ in range(3):
    weights = scheme.weights(params, state)
    z = jax.random.normal(jax.random.wrap_key_data(state["key"]), (3,))
    expected = np.exp(z) / np.exp(z).sum()  # softmax in numpy
    np.testing.assert_allclose([weights[n] for n in scheme.task_names], expected, rtol=1e-6)
    drawn.append(tuple(float(weights[n]) for n in scheme.task_names))
    state = scheme.observe(state, {n: 1.0 for n in scheme.task_names})
  assert len(set(drawn)) == 3  # a new draw every step
  _, again = scheme.init()
  assert np.array_equal(again["key"], scheme.init()[1]["key"])  # the same sequence on a restart


def test_famo_weights_and_logit_updates_on_a_hand_worked_sequence():
  """Three steps of FAMO's logit update against numpy: softmax Jacobian' delta, then PyTorch's Adam
  with L2 weight decay (grad + gamma w; bias-corrected moments)."""
  scheme = weighting_lib.build("famo", NYU, famo_gamma=0.01, famo_lr=0.025)
  params, state = scheme.init()
  names = scheme.task_names
  sequence = [([2.0, 0.5, 0.3], [1.8, 0.5, 0.25]), ([1.8, 0.5, 0.25], [1.7, 0.52, 0.2]),
              ([1.7, 0.52, 0.2], [1.5, 0.5, 0.2])]
  w, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
  for t, (before, after) in enumerate(sequence, start=1):
    losses = {n: jnp.float32(x) for n, x in zip(names, before)}
    z = np.exp(w) / np.exp(w).sum()
    expected_weights = z / ((z / (np.array(before) + 1e-8)).sum() * (np.array(before) + 1e-8))
    gradient = jax.grad(lambda l: scheme.total(l, params, state))(losses)
    np.testing.assert_allclose([gradient[n] for n in names], expected_weights, rtol=1e-5)
    state = scheme.observe(state, losses)
    np.testing.assert_allclose([scheme.weights(params, state)[n] for n in names],
                               expected_weights, rtol=1e-5)
    state = scheme.after_update(state, losses, {n: jnp.float32(x) for n, x in zip(names, after)})
    delta = np.log(np.array(before) + 1e-8) - np.log(np.array(after) + 1e-8)
    d = (np.diag(z) - np.outer(z, z)) @ delta  # softmax's Jacobian is symmetric
    g = d + 0.01 * w
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    w = w - 0.025 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(state["logits"], w, rtol=1e-4, atol=1e-7)
  assert np.argmax(w) == 1  # the task whose loss fell least (relatively) gains weight


def test_db_mtl_buffers_log_loss_gradients_and_equalises_their_norms():
  """Two steps against numpy: h <- g/L + beta / t^sigma (h - g/L); update sum_k max|h| / |h_k| h_k."""
  scheme = weighting_lib.build("db_mtl", NYU, db_beta=0.9, db_beta_sigma=0.5)
  params, state = scheme.init_for({"w": jnp.zeros((4,))})
  rng = np.random.default_rng(1)
  h = np.zeros((3, 4))
  for t in (1, 2):
    g, losses = rng.normal(size=(3, 4)), rng.uniform(0.5, 2.0, size=3)
    combined = scheme.combine({"w": jnp.asarray(g, jnp.float32)}, jnp.asarray(losses, jnp.float32),
                              params, state)
    state = combined.state
    log_g = g / (losses[:, None] + 1e-8)
    h = log_g + 0.9 / t ** 0.5 * (h - log_g)
    norms = np.linalg.norm(h, axis=1)
    np.testing.assert_allclose(combined.shared["w"], (norms.max() / norms) @ h, rtol=1e-5)
    np.testing.assert_allclose(combined.task_weights, 1 / losses, rtol=1e-6)
  with pytest.raises(ValueError, match="init_for"):
    scheme.init()


def test_gradnorm_trains_its_weights_toward_balanced_gradient_norms():
  """After epoch 0 (equal weights, its mean losses recorded): the weights K softmax(s) and the
  gradient of sum_k |w_k |g_k| - mean(w |g|) r_k^alpha| in s, against numpy."""
  scheme = weighting_lib.build("gradnorm", NYU, gradnorm_alpha=1.5)
  params, state = scheme.init()
  rng = np.random.default_rng(2)
  g = rng.normal(size=(3, 6)) * np.array([[1.0], [3.0], [0.5]])
  grads = {"w": jnp.asarray(g, jnp.float32)}
  first = scheme.combine(grads, jnp.asarray([2.0, 1.0, 0.5]), params, state)
  np.testing.assert_allclose(first.task_weights, [1, 1, 1])  # epoch 0: equal weights
  assert np.all(np.asarray(first.params_grad["loss_scale"]) == 0)
  state = scheme.end_epoch(first.state)
  np.testing.assert_allclose(state["initial"], [2.0, 1.0, 0.5])  # epoch 0's mean losses
  s = np.array([0.2, -0.1, 0.4])
  params = {"loss_scale": jnp.asarray(s, jnp.float32)}
  losses = np.array([1.0, 0.9, 0.2])
  combined = scheme.combine(grads, jnp.asarray(losses, jnp.float32), params, state)
  z = np.exp(s) / np.exp(s).sum()
  w, n = 3 * z, np.linalg.norm(g, axis=1)
  r = (losses / [2.0, 1.0, 0.5]) / np.mean(losses / [2.0, 1.0, 0.5])
  target = np.mean(w * n) * r ** 1.5
  jacobian = 3 * (np.diag(z) - np.outer(z, z))  # d w_k / d s_j
  expected = (np.sign(w * n - target) * n) @ jacobian
  np.testing.assert_allclose(combined.task_weights, w, rtol=1e-5)
  np.testing.assert_allclose(combined.params_grad["loss_scale"], expected, rtol=1e-4)
  np.testing.assert_allclose(combined.shared["w"], w @ g, rtol=1e-5)
