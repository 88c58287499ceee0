"""The compute-precision option: bfloat16 activations, float32 everything that accumulates.

With config.model.dtype='bfloat16' the convolutions, BatchNorm outputs, taps and embedding of R
and D's hidden layers run in bfloat16, while parameters, BatchNorm running statistics,
optimizer state, losses and metrics stay float32. The bfloat16 losses track the float32 run's
on the same batches and state.
"""
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import pytest

from aprn_jax import train_state, train_step
import tiny_setup

DEVICES, STEPS = 2, 4
LOSSES = ("identity_loss", "d_l1", "adversarial_l1")


def precision_config(dtype):
  cfg = tiny_setup.config(tap="stage2")
  cfg.model.dtype = dtype
  return cfg


def float_leaves(tree):
  """(path, leaf) of every floating-point leaf, for error messages that name the leaf."""
  return [(jax.tree_util.keystr(path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if jnp.issubdtype(leaf.dtype, jnp.floating)]


def forward(dtype, state, batch):
  """R's outputs, D's landmarks and D's captured intermediates, and R.embed, in eval mode."""
  recognizer, disc = tiny_setup.build(precision_config(dtype), axis_name=None)
  out = recognizer.apply(state.recognizer, batch["image"], batch["label"], train=False)
  landmarks, captured = disc.apply(state.discriminator, out["taps"]["stage2"], train=False,
                                   capture_intermediates=True)
  embedding = recognizer.apply(state.recognizer, batch["image"], method="embed")
  return out, landmarks, captured["intermediates"], embedding


@pytest.fixture(scope="module")
def runs():
  """Per dtype: STEPS steps of the pmapped step from one shared float32-initialised state.

  Besides its own run's metrics, the bfloat16 step also evaluates each float32 state on that
  state's batch, so its losses can be compared at identical inputs.
  """
  mean_face = np.random.RandomState(5).uniform(-0.5, 0.5, (tiny_setup.POINTS, 2)).astype(
      np.float32)
  cfg32 = precision_config("float32")
  tx = train_state.make_optimizer(cfg32.optim, steps_per_epoch=10)
  # Placed as the step places its output (replicated over the step's devices), so the step
  # compiles once for the initial state and the states it returns.
  replicated = NamedSharding(Mesh(np.array(jax.devices()[:DEVICES]), (train_step.AXIS,)),
                             PartitionSpec())
  start = jax.device_put(tiny_setup.init_state(cfg32, tx, tx), replicated)
  batches = [tiny_setup.shard(tiny_setup.batch(8, seed=i), DEVICES) for i in range(STEPS)]
  steps = {}
  for dtype in ("float32", "bfloat16"):
    recognizer, disc = tiny_setup.build(precision_config(dtype))
    steps[dtype] = train_step.pmap_train_step(recognizer=recognizer, discriminator=disc,
                                              r_tx=tx, d_tx=tx, tap="stage2",
                                              variant="adversarial")
  states = {dtype: [start] for dtype in steps}
  metrics = {dtype: [] for dtype in steps}
  for batch in batches:
    for dtype, step in steps.items():
      state, step_metrics = step(states[dtype][-1], batch, mean_face)
      states[dtype].append(state)
      metrics[dtype].append(step_metrics)
  same_inputs = [steps["bfloat16"](state, batch, mean_face)
                 for state, batch in zip(states["float32"], batches)]
  return dict(states=states, metrics=metrics, same_inputs=same_inputs)


def test_bfloat16_parameters_statistics_and_optimizer_state_stay_float32(runs):
  start, state = runs["states"]["bfloat16"][0], runs["states"]["bfloat16"][-1]
  parts = dict(recognizer=state.recognizer, discriminator=state.discriminator,
               recognizer_opt=state.recognizer_opt, discriminator_opt=state.discriminator_opt)
  for name, tree in parts.items():
    leaves = float_leaves(tree)
    assert leaves, name
    for path, leaf in leaves:
      assert leaf.dtype == jnp.float32, f"{name}{path} is {leaf.dtype}"
  # The BatchNorm statistics were updated (not just left at their float32 initial values).
  assert not np.allclose(state.recognizer["batch_stats"]["backbone"]["stem_bn"]["mean"],
                         start.recognizer["batch_stats"]["backbone"]["stem_bn"]["mean"])
  assert not np.allclose(state.discriminator["batch_stats"]["bn1"]["var"],
                         start.discriminator["batch_stats"]["bn1"]["var"])
  assert int(state.step) == STEPS


def test_bfloat16_metrics_are_finite_float32(runs):
  for step_metrics in runs["metrics"]["bfloat16"]:
    for name, value in step_metrics.items():
      assert value.dtype == jnp.float32, f"metric {name} is {value.dtype}"
      assert np.isfinite(value), f"metric {name} = {value}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activations_follow_the_compute_dtype(runs, dtype):
  state = runs["states"][dtype][-1]
  out, landmarks, captured, embedding = jax.jit(forward, static_argnums=0)(
      dtype, state, tiny_setup.batch(4, seed=9))
  expected = jnp.dtype(dtype)
  for name, tap in out["taps"].items():
    assert tap.dtype == expected, f"tap {name} is {tap.dtype}"
  assert out["embedding"].dtype == expected
  assert captured["conv1"]["__call__"][0].dtype == expected
  assert captured["bn1"]["__call__"][0].dtype == expected
  # The heads, D's output and the deployed embedding are float32 whatever the compute dtype.
  assert out["logits"].dtype == out["plain_logits"].dtype == jnp.float32
  assert landmarks.dtype == embedding.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-5)


def test_bfloat16_losses_track_float32(runs):
  for step, (m32, (_, m16)) in enumerate(zip(runs["metrics"]["float32"], runs["same_inputs"])):
    for name in LOSSES:
      np.testing.assert_allclose(m16[name], m32[name], rtol=5e-2,
                                 err_msg=f"{name} at step {step}")
  # From the same state and batch both steps move R's parameters the same way, up to the
  # bfloat16 rounding of the gradients. BatchNorm over 4 images per device on maps of 1 to
  # 4 pixels amplifies that rounding on some batches, so the cosine is averaged over steps.
  cosines = []
  states32 = runs["states"]["float32"]
  for start, after32, (after16, _) in zip(states32, states32[1:], runs["same_inputs"]):
    moved32, moved16 = (parameter_change(start, after) for after in (after32, after16))
    cosines.append(moved32 @ moved16 / (np.linalg.norm(moved32) * np.linalg.norm(moved16)))
  assert np.mean(cosines) > 0.6, cosines  # unrelated updates would give about 0


def parameter_change(before, after):
  """R's parameter update as one flat vector."""
  return np.concatenate([np.ravel(a - b) for a, b in zip(
      jax.tree.leaves(after.recognizer["params"]), jax.tree.leaves(before.recognizer["params"]))])
