"""The train step's gradient routing, update periods and multi-device equivalence.

Expected gradients are computed independently: plain jax.grad of hand-written losses, with
D run twice (once per target) and stop-gradients where Eq. 2 puts them.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aprn_jax import losses, train_step
import tiny_setup

ALPHA = 0.2
ABOVE_TAP = ("stage3_block1", "stage3_bn", "stage4_block1", "stage4_bn", "embedding")


def run_step(state, batch, mean_face, cfg, r_tx, d_tx, devices=1, **kwargs):
  step = _pmapped_step(cfg.aprn.tap, r_tx, d_tx, devices, tuple(sorted(kwargs.items())))
  return step(state, tiny_setup.shard(batch, devices), mean_face)


@functools.lru_cache(maxsize=None)
def _pmapped_step(tap, r_tx, d_tx, devices, kwargs):
  recognizer, disc = tiny_setup.build(tiny_setup.config(tap))
  return jax.pmap(
      functools.partial(train_step.train_step, recognizer=recognizer, discriminator=disc,
                        r_tx=r_tx, d_tx=d_tx, tap=tap, alpha=ALPHA, **dict(kwargs)),
      axis_name="batch", in_axes=(None, 0, None), out_axes=(None, None),
      devices=jax.devices()[:devices])


def reference_gradients(state, batch, mean_face, cfg, d_weights, r_weights):
  """(D's gradient, R's gradient, R's identity-only gradient) from separate jax.grad calls."""
  return _reference_gradients(cfg.aprn.tap, state.recognizer, state.discriminator, batch,
                              mean_face, jnp.asarray(d_weights), jnp.asarray(r_weights))


@functools.partial(jax.jit, static_argnums=0)
def _reference_gradients(tap, r_vars, d_vars, batch, mean_face, d_weights, r_weights):
  recognizer, disc = tiny_setup.build(tiny_setup.config(tap), axis_name=None)
  labels, target = batch["label"], batch["landmarks"]

  def r_forward(r_params):
    out, _ = recognizer.apply({"params": r_params, "batch_stats": r_vars["batch_stats"]},
                              batch["image"], labels, train=True, mutable=["batch_stats"])
    log_probs = jax.nn.log_softmax(out["logits"])
    cross_entropy = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], 1))
    return cross_entropy, out["taps"][tap]

  def d_forward(d_params, f):
    y, _ = disc.apply({"params": d_params, "batch_stats": d_vars["batch_stats"]}, f,
                      train=True, mutable=["batch_stats"])
    return y

  def pose(y, w):
    return ALPHA * (w[0] * jnp.mean(jnp.abs(y - target))
                    + w[1] * jnp.mean(jnp.abs(y - mean_face[None])))

  f = r_forward(r_vars["params"])[1]
  d_grad = jax.grad(lambda p: pose(d_forward(p, jax.lax.stop_gradient(f)), d_weights))(
      d_vars["params"])
  frozen_d = jax.lax.stop_gradient(d_vars["params"])
  r_grad = jax.grad(
      lambda p: r_forward(p)[0] + pose(d_forward(frozen_d, r_forward(p)[1]), r_weights))(
          r_vars["params"])
  id_grad = jax.grad(lambda p: r_forward(p)[0])(r_vars["params"])
  return d_grad, r_grad, id_grad


def applied_gradient(old, new):
  """With optax.sgd(1.0) the update is -gradient, so gradient = old - new."""
  return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), old, new)


def assert_trees_close(actual, expected, tol=1e-4):
  """Leaf-wise closeness, tolerance relative to the leaf's largest magnitude."""
  def check(a, e):
    np.testing.assert_allclose(a, e, rtol=0, atol=tol * max(np.abs(e).max(), 1e-6))
  jax.tree.map(check, actual, expected)


@pytest.fixture(scope="module")
def setup():
  cfg = tiny_setup.config()
  sgd = optax.sgd(1.0)
  state = tiny_setup.init_state(cfg, sgd, sgd)
  # D starts near the mean face with a 0.01-scaled output kernel; at flax's default scale its
  # pose gradient to R is large enough to tell the routes apart.
  state = state.replace(discriminator=jax.tree_util.tree_map_with_path(
      lambda path, x: x * 100 if "landmarks" in str(path) and "kernel" in str(path) else x,
      state.discriminator))
  batch = tiny_setup.batch(8)
  mean_face = np.random.RandomState(5).uniform(-0.5, 0.5, (tiny_setup.POINTS, 2)).astype(
      np.float32)
  return cfg, sgd, state, batch, mean_face


@pytest.mark.parametrize("variant", list(losses.ROUTING))
def test_gradient_routing_matches_independent_gradients(setup, variant):
  cfg, sgd, state, batch, mean_face = setup
  new_state, metrics = run_step(state, batch, mean_face, cfg, sgd, sgd, variant=variant)
  d_weights, r_weights = losses.ROUTING[variant]
  d_ref, r_ref, id_only = reference_gradients(state, batch, mean_face, cfg, d_weights,
                                              r_weights)

  d_got = applied_gradient(state.discriminator["params"], new_state.discriminator["params"])
  r_got = applied_gradient(state.recognizer["params"], new_state.recognizer["params"])
  assert_trees_close(d_got, d_ref)
  assert_trees_close(r_got, r_ref)
  # Above the tap and in the head: the identity gradient alone, in every variant (to float32
  # rounding, 4e-5 of a leaf's largest value on some CPUs; a pose term would be far larger).
  for name in ABOVE_TAP:
    assert_trees_close(r_got["backbone"][name], id_only["backbone"][name], tol=1e-4)
  assert_trees_close(r_got["head"], id_only["head"], tol=1e-4)
  # Below the tap: the pose part is large where the variant routes one, absent otherwise.
  stem_got, stem_ref, stem_id = (g["backbone"]["stem_conv"]["kernel"]
                                 for g in (r_got, r_ref, id_only))
  scale = np.abs(stem_id).max()
  if r_weights == (0.0, 0.0):
    assert np.abs(stem_got - stem_id).max() < 1e-5 * scale
  else:
    assert np.abs(stem_ref - stem_id).max() > 1e-2 * scale
  assert set(metrics) == {"identity_loss", "accuracy", "d_l1", "adversarial_l1",
                          "truth_to_mean_l1", "d_over_mean_face"}
  np.testing.assert_allclose(metrics["truth_to_mean_l1"],
                             np.abs(batch["landmarks"] - mean_face).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["d_over_mean_face"],
                             metrics["d_l1"] / metrics["truth_to_mean_l1"], rtol=1e-6)


def test_warmup_step_trains_d_alone(setup):
  """D's warm-up: D gets the full step's update; R's parameters, statistics and optimizer
  state stay as they were."""
  cfg, sgd, state, batch, mean_face = setup
  warm, metrics = run_step(state, batch, mean_face, cfg, sgd, sgd, variant="adversarial",
                           train_recognizer=False)
  full, full_metrics = run_step(state, batch, mean_face, cfg, sgd, sgd, variant="adversarial")
  jax.tree.map(np.testing.assert_array_equal, warm.recognizer, state.recognizer)
  jax.tree.map(np.testing.assert_array_equal, warm.recognizer_opt, state.recognizer_opt)
  d_ref, _, _ = reference_gradients(state, batch, mean_face, cfg, (1, 0), (0, 1))
  assert_trees_close(applied_gradient(state.discriminator["params"],
                                      warm.discriminator["params"]), d_ref)
  jax.tree.map(np.testing.assert_array_equal, warm.discriminator, full.discriminator)
  assert int(warm.step) == int(state.step) + 1
  for name in ("d_l1", "truth_to_mean_l1", "identity_loss"):
    np.testing.assert_allclose(metrics[name], full_metrics[name], rtol=1e-6)


def test_update_periods_skip_discriminator_and_adversarial_term(setup):
  cfg, sgd, state, batch, mean_face = setup
  _, r_adv, id_only = reference_gradients(state, batch, mean_face, cfg, (1, 0), (0, 1))
  kwargs = dict(variant="adversarial", d_period=2, adv_period=2)

  off, _ = run_step(state.replace(step=jnp.ones((), jnp.int32)), batch, mean_face, cfg, sgd,
                    sgd, **kwargs)
  jax.tree.map(np.testing.assert_array_equal, off.discriminator, state.discriminator)
  assert_trees_close(applied_gradient(state.recognizer["params"], off.recognizer["params"]),
                     id_only)

  on, _ = run_step(state.replace(step=jnp.full((), 2, jnp.int32)), batch, mean_face, cfg, sgd,
                   sgd, **kwargs)
  assert_trees_close(applied_gradient(state.recognizer["params"], on.recognizer["params"]),
                     r_adv)
  assert not np.allclose(on.discriminator["params"]["landmarks"]["kernel"],
                         state.discriminator["params"]["landmarks"]["kernel"])


def test_baseline_step_does_not_run_the_discriminator(setup):
  cfg, sgd, state, batch, mean_face = setup
  new_state, metrics = run_step(state, batch, mean_face, cfg, sgd, sgd, with_pose=False)
  jax.tree.map(np.testing.assert_array_equal, new_state.discriminator, state.discriminator)
  _, _, id_only = reference_gradients(state, batch, mean_face, cfg, (1, 0), (0, 1))
  assert_trees_close(applied_gradient(state.recognizer["params"],
                                      new_state.recognizer["params"]), id_only)
  assert set(metrics) == {"identity_loss", "accuracy"}


@pytest.mark.parametrize("ordered", [False, True])
def test_four_devices_equal_one_device_on_the_same_global_batch(ordered):
  """Also with every cross-device sum in device order (config.train.ordered_reductions)."""
  cfg = tiny_setup.config()
  r_tx = d_tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  state = tiny_setup.init_state(cfg, r_tx, d_tx)
  mean_face = np.zeros((tiny_setup.POINTS, 2), np.float32)
  states = {}
  for devices in (1, 4):
    s = state
    for i in range(3):
      s, metrics = run_step(s, tiny_setup.batch(16, seed=i), mean_face, cfg, r_tx, d_tx,
                            devices=devices, ordered_reductions=ordered)
    states[devices] = (s, metrics)
  (one, m1), (four, m4) = states[1], states[4]
  # Parameters, momentum traces and BatchNorm statistics of R and D all agree.
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(a).max()))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4), m1, m4)
  assert int(four.step) == 3


def test_bad_variant_and_landmarks_are_named():
  with pytest.raises(ValueError, match=r"config\.aprn\.loss='gan'.*adversarial"):
    losses.routing("gan")
  with pytest.raises(ValueError, match=r"batch\['landmarks'\].*\(\.\.\., 51, 2\)"):
    train_step.check_landmarks("batch['landmarks']", np.zeros((4, 68, 2)), 51)
  bad = np.zeros((4, 51, 2))
  bad[2, 7, 1] = np.nan
  with pytest.raises(ValueError, match=r"mean face.*non-finite.*\(2, 7, 1\)"):
    train_step.check_landmarks("mean face", bad, 51)
