"""The sharded classifier (Partial FC) against the dense head and a numpy softmax, its
checkpoint layout on other device counts, and a sharded tiny run killed and resumed.

Runs on the 4 fake CPU devices of conftest.py. 10 classes on 4 devices: 3 rows each, the last
device's 2 padding rows must never count.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from aprn_jax import checkpoints, losses, models, train_state, train_step, trainer
from aprn_jax.models import layers, partial_fc
import kill
import tiny_setup

CLASSES, DEVICES, BATCH = 10, 4, 16
MARGINS = {"softmax": {}, "cosface": dict(s=30.0, m=0.35), "arcface": dict(s=32.0, m=0.5),
           "combined": dict(s=30.0, m1=1.0, m2=0.3, m3=0.2)}
TX = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))


def make(head, classifier="sharded", sample_rate=1.0, classes=CLASSES):
  cfg = tiny_setup.config()
  cfg.model.update(head=head, classifier=classifier, sample_rate=sample_rate, **MARGINS[head])
  return models.make_models(cfg, num_classes=classes, num_landmarks=tiny_setup.POINTS,
                            axis_name="batch"), cfg


def labelled_batch(seed, classes=CLASSES):
  batch = tiny_setup.batch(BATCH, seed)
  batch["label"] = np.random.RandomState(100 + seed).randint(0, classes, BATCH).astype(np.int32)
  return batch


@functools.lru_cache(maxsize=None)
def dense_state(head):
  """(recognizer, discriminator, config, initial state) with the dense head."""
  (recognizer, disc), cfg = make(head, "dense")
  return recognizer, disc, cfg, train_state.create(recognizer, disc, TX, TX, jax.random.key(0),
                                                   tiny_setup.IMAGE, cfg.aprn.tap)


def backbone_only(state):
  """`state` without its dense head: the recognizer of a sharded run."""
  backbone = {kind: {"backbone": tree["backbone"]} for kind, tree in state.recognizer.items()}
  return state.replace(recognizer=backbone, recognizer_opt=TX.init(backbone["params"]))


def dense_rows(head_params):
  """The dense head's parameters as rows in class order (independent of partial_fc)."""
  if "classifier" in head_params:  # Softmax: kernel (D, C), bias (C,)
    return {"kernel": np.asarray(head_params["classifier"]["kernel"]).T,
            "bias": np.asarray(head_params["classifier"]["bias"])}
  return {"centres": np.asarray(head_params["centres"]).T}


def assert_close(actual, expected, tol=2e-5):
  def check(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    np.testing.assert_allclose(a, e, rtol=0, atol=tol * max(np.abs(e).max(), 1e-6))
  jax.tree.map(check, actual, expected)


# ArcFace (margin and fallback) in the default suite; the step's wiring is the same for every
# head, and the other heads' loss and gradients are compared below.
@pytest.mark.slow  # full pmapped steps of both heads (about 30 s each)
@pytest.mark.parametrize("head", [pytest.param("softmax", marks=pytest.mark.slow),
                                  pytest.param("cosface", marks=pytest.mark.slow), "arcface"])
def test_rate_one_equals_the_dense_head_in_the_pmapped_step(head):
  """Two baseline steps (so momentum counts) on the same global batches: the same loss,
  accuracy, backbone, BatchNorm statistics, rows and their momentum. Each step starts the
  sharded run from the dense run's state: the two runs round differently (the cotangent's
  reduce-scatter), and carried into the next step's forward pass a rounding-sized difference
  can flip a ReLU or a max-pool's choice in the narrow early layers (measured with the oneDNN
  layers, Softmax: 9.6e-7 apart after one step carried on, 1% after two in stage1's
  BatchNorm biases)."""
  dense_r, disc, cfg, dense = dense_state(head)
  (sharded_r, _), _ = make(head)
  like = partial_fc.init(sharded_r.head, jax.random.key(0), 8, TX, jax.local_devices())
  mean_face = np.zeros((tiny_setup.POINTS, 2), np.float32)
  steps = {name: train_step.pmap_train_step(recognizer=r, discriminator=disc, r_tx=TX,
                                            d_tx=TX, tap=cfg.aprn.tap, with_pose=False)
           for name, r in (("dense", dense_r), ("sharded", sharded_r))}
  for seed in range(2):
    sharded = sharded_state(dense, like)
    batch = tiny_setup.shard(labelled_batch(seed), DEVICES)
    dense, dense_metrics = steps["dense"](dense, batch, mean_face)
    sharded, sharded_metrics = steps["sharded"](train_step.replicate(sharded), batch, mean_face)
    np.testing.assert_allclose(sharded_metrics["identity_loss"], dense_metrics["identity_loss"],
                               rtol=1e-5)
    assert float(sharded_metrics["accuracy"]) == float(dense_metrics["accuracy"])
    assert set(sharded.recognizer["params"]) == {"backbone"}
    assert_close(sharded.recognizer, {k: {"backbone": v["backbone"]}
                                      for k, v in dense.recognizer.items()})
    assert_close(sharded.recognizer_opt[1][0].trace,
                 {"backbone": dense.recognizer_opt[1][0].trace["backbone"]})
    saved = partial_fc.to_global(sharded.classifier)
    assert_close(saved["params"], dense_rows(dense.recognizer["params"]["head"]))
    dense_trace = dense.recognizer_opt[1][0].trace["head"]  # chain(decay, sgd(trace, scale))
    assert_close(saved["opt"][1][0].trace, dense_rows(dense_trace))
    assert np.abs(saved["opt"][1][0].trace[next(iter(saved["params"]))]).max() > 0


def with_trace(opt, trace):
  """TX's state `opt` (chain(decay, sgd(trace, scale))) with its momentum `trace`."""
  decay, (sgd, *rest) = opt
  return decay, (sgd._replace(trace=trace), *rest)


def sharded_state(dense, like):
  """The dense run's state as a sharded run's: its backbone with the backbone's momentum, and
  its head as rows (`like`'s split) with the head's momentum."""
  trace = dense.recognizer_opt[1][0].trace
  state = backbone_only(dense)
  state = state.replace(recognizer_opt=with_trace(state.recognizer_opt,
                                                  {"backbone": trace["backbone"]}))
  opt = with_trace(partial_fc.to_global(like)["opt"], dense_rows(trace["head"]))
  return state.replace(classifier=partial_fc.from_global(
      {"params": dense_rows(dense.recognizer["params"]["head"]), "opt": opt}, like))


def _pmapped_loss(head, rows, embedding, labels, key, ordered=False):
  def loss(r, e, y):
    with layers.ordered_reductions(ordered):
      return partial_fc.loss_and_grads(head, r, e, y, key, "batch")
  fn = jax.pmap(loss, axis_name="batch")
  return fn(rows, embedding.reshape(DEVICES, -1, embedding.shape[-1]),
            labels.reshape(DEVICES, -1))


@pytest.mark.parametrize("head,ordered", [(head, False) for head in MARGINS]
                         + [("arcface", True)])
def test_rate_one_loss_and_gradients_equal_the_dense_heads(head, ordered):
  """Embedding and row gradients of the global mean loss, from jax.grad of the dense head;
  also with the cross-device sums in device order (config.train.ordered_reductions)."""
  (dense_r, _), _ = make(head, "dense")
  (sharded_r, _), _ = make(head)
  rng = np.random.RandomState(3)
  embedding = rng.randn(BATCH, 8).astype(np.float32)
  labels = rng.randint(0, CLASSES, BATCH).astype(np.int32)
  params = dense_r.head.init(jax.random.key(1), embedding, labels)["params"]

  def dense_loss(e, p):
    return losses.identity_loss(dense_r.head.apply({"params": p}, e, labels)[0], labels)

  loss, (g_embedding, g_params) = jax.value_and_grad(dense_loss, (0, 1))(embedding, params)
  like = partial_fc.init(sharded_r.head, jax.random.key(0), 8, optax.sgd(0.1),
                         jax.devices()[:DEVICES])
  rows = partial_fc.from_global({"params": dense_rows(params),
                                 "opt": partial_fc.to_global(like)["opt"]}, like)
  got, _, cotangent, row_grads = _pmapped_loss(sharded_r.head, rows.params, embedding, labels,
                                               jax.random.key(0), ordered)
  np.testing.assert_allclose(got, np.full(DEVICES, loss), rtol=1e-5)
  # Each device's cotangent: the gradient of its own images' mean loss (DEVICES x global).
  assert_close(np.asarray(cotangent).reshape(BATCH, -1) / DEVICES, g_embedding)
  grads = partial_fc.to_global(partial_fc.Shards(row_grads, {}, CLASSES))["params"]
  assert_close(grads, dense_rows(g_params))
  padding = jax.tree.leaves(row_grads)[0][-1, -2:]  # rows 10 and 11 of the last device
  assert np.all(np.asarray(padding) == 0)


def numpy_sampled_loss(head, centres, embedding, labels, classes):
  """Cross-entropy of the margin softmax over `classes` only (the target's margin as in the
  heads' docstring), numpy float64."""
  w, e = centres[classes].astype(np.float64), embedding.astype(np.float64)
  target = np.searchsorted(classes, labels)
  assert np.all(classes[target] == labels)
  cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (
      w / np.linalg.norm(w, axis=1, keepdims=True)).T
  logits = head.s * cos
  for i, t in enumerate(target):
    theta = np.arccos(np.clip(cos[i, t], -1.0, 1.0))
    angle = head.m1 * theta + head.m2
    value = np.cos(angle) if angle <= np.pi else cos[i, t] - head.m2 * np.sin(head.m2)
    logits[i, t] = head.s * (value - head.m3)
  top = logits.max(axis=1, keepdims=True)
  log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
  return float(np.mean(log_z - logits[np.arange(len(labels)), target]))


def _sampled(head, labels, key, rows):
  """Each device's chosen rows as global class ids, drawn as loss_and_grads draws them."""
  def choose(index, y):
    return partial_fc.choose(head, jax.random.fold_in(key, index), y, rows, index * rows)[0]
  fn = jax.pmap(choose, in_axes=(0, None))
  return np.asarray(fn(np.arange(DEVICES), labels)) + rows * np.arange(DEVICES)[:, None]


@pytest.mark.parametrize("classes,size,on_device_0", [(800, 20, False), (400, 16, True)])
def test_sampled_loss_is_the_softmax_over_the_sampled_classes(classes, size, on_device_0):
  """Rate 0.1 on a global batch of 16. 800 classes: 200 rows a device, K = 20. 400 classes:
  100 rows, K = max(10, 16) = 16; with 16 distinct labels on device 0 its sample is exactly
  those positives (the rate exceeded, no positive dropped)."""
  head = make("arcface", sample_rate=0.1, classes=classes)[0][0].head
  rows = partial_fc.shard_rows(classes, DEVICES)
  assert partial_fc.sample_size(rows, 0.1, BATCH) == size
  rng = np.random.RandomState(4)
  embedding = rng.randn(BATCH, 8).astype(np.float32)
  labels = (rng.permutation(rows)[:BATCH] if on_device_0
            else rng.randint(0, classes, BATCH)).astype(np.int32)
  centres = rng.randn(classes, 8).astype(np.float32)
  like = partial_fc.init(head, jax.random.key(0), 8, optax.sgd(0.1), jax.devices()[:DEVICES])
  shards = partial_fc.from_global({"params": {"centres": centres},
                                   "opt": partial_fc.to_global(like)["opt"]}, like)
  key = jax.random.key(7)
  loss, _, _, row_grads = _pmapped_loss(head, shards.params, embedding, labels, key)
  chosen = _sampled(head, labels, key, rows)
  assert chosen.shape == (DEVICES, size) and all(len(set(c)) == size for c in chosen)
  assert set(labels) <= set(chosen.ravel())  # every positive kept
  if on_device_0:
    assert set(chosen[0]) == set(labels)
  sampled = np.unique(chosen)
  np.testing.assert_allclose(loss, numpy_sampled_loss(head, centres, embedding, labels, sampled),
                             rtol=2e-5)
  # Rows outside the sample get no gradient; the same key draws the same sample, another not.
  grads = np.asarray(row_grads["centres"]).reshape(DEVICES * rows, -1)
  outside = np.setdiff1d(np.arange(classes), sampled)
  assert np.all(grads[outside] == 0) and np.abs(grads[sampled]).max() > 0
  np.testing.assert_array_equal(_sampled(head, labels, key, rows), chosen)
  assert not np.array_equal(_sampled(head, labels, jax.random.key(8), rows), chosen)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sampled_update_equals_the_update_with_the_zero_padded_gradient(optimizer):
  """`update` on the sample's gradient (zero-gradient rows, then the chosen rows apart) gives
  the optimizer's update with the whole shard's gradient, zero outside the sample."""
  head = make("arcface", sample_rate=0.1, classes=800)[0][0].head
  cfg = tiny_setup.config()
  cfg.optim.name = optimizer
  tx = train_state.make_optimizer(cfg.optim, steps_per_epoch=10)
  rng = np.random.RandomState(6)
  like = partial_fc.init(head, jax.random.key(0), 8, tx, jax.devices()[:DEVICES])
  saved = partial_fc.to_global(like)  # random rows; a random state, positive (Adam's nu)
  shards = partial_fc.from_global(
      {"params": jax.tree.map(lambda x: rng.randn(*x.shape).astype(x.dtype), saved["params"]),
       "opt": jax.tree.map(lambda x: rng.rand(*x.shape).astype(x.dtype) if np.ndim(x) else x,
                           saved["opt"])}, like)
  embedding = rng.randn(BATCH, 8).astype(np.float32)
  labels = rng.randint(0, 800, BATCH).astype(np.int32)
  key = jax.random.key(7)

  def both(rows, e, y):
    *_, grads, chosen = partial_fc.loss_and_sample_grads(head, rows.params, e, y, key, "batch")
    *_, full = partial_fc.loss_and_grads(head, rows.params, e, y, key, "batch")
    updates, opt = tx.update(full, rows.opt, rows.params)
    expected = rows.replace(params=optax.apply_updates(rows.params, updates), opt=opt)
    return partial_fc.update(tx, rows, grads, chosen), expected
  got, expected = jax.pmap(both, axis_name="batch")(
      shards, embedding.reshape(DEVICES, -1, 8), labels.reshape(DEVICES, -1))
  # Equal up to float32 rounding (Adam's square root and division, compiled in other fusions).
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-9),
               partial_fc.to_global(got), partial_fc.to_global(expected))
  moved = np.abs(partial_fc.to_global(got)["params"]["centres"] - partial_fc.to_global(
      shards)["params"]["centres"]).sum(1)
  assert np.all(moved > 0)  # weight decay and momentum move every row, sampled or not


def test_checkpoint_restores_on_other_device_counts_without_the_recognizer_holding_it(
    tmp_path):
  """Rows and momentum of a trained look (random) and a step count, saved from 4 devices,
  restore exactly on 1, 2 and 3 devices (3: 4 rows each, other padding)."""
  (recognizer, _), cfg = make("arcface", sample_rate=0.5)
  tx = train_state.make_optimizer(cfg.optim, steps_per_epoch=10)  # its state holds a count
  base = backbone_only(dense_state("arcface")[3])
  like = partial_fc.init(recognizer.head, jax.random.key(0), 8, tx, jax.local_devices())
  rng = np.random.RandomState(5)
  saved = jax.tree.map(lambda x: rng.randn(*x.shape).astype(x.dtype) if np.ndim(x) else
                       np.full(x.shape, 3, x.dtype), partial_fc.to_global(like))
  assert saved["params"]["centres"].shape == (CLASSES, 8)
  assert [x for x in jax.tree.leaves(saved["opt"]) if np.ndim(x) == 0] == [3]  # the count
  state = base.replace(classifier=partial_fc.from_global(saved, like))
  mngr = checkpoints.manager(tmp_path / "ckpt")
  checkpoints.save(mngr, state)
  for devices in (1, 2, 3):
    fresh = base.replace(classifier=partial_fc.init(recognizer.head, jax.random.key(1), 8, tx,
                                                    jax.devices()[:devices]))
    restored = checkpoints.restore(mngr, fresh)
    rows = partial_fc.shard_rows(CLASSES, devices)
    assert restored.classifier.params["centres"].shape == (devices, rows, 8)
    jax.tree.map(np.testing.assert_array_equal, partial_fc.to_global(restored.classifier),
                 saved)
    assert np.all(restored.classifier.params["centres"].reshape(-1, 8)[CLASSES:] == 0)
    alone = checkpoints.restore_classifier(tmp_path / "ckpt", fresh.classifier)
    jax.tree.map(np.testing.assert_array_equal, partial_fc.to_global(alone), saved)
  # The recognizer item (what eval, embed and export read) is the backbone alone.
  variables, _ = checkpoints.restore_recognizer(tmp_path / "ckpt", state.recognizer)
  assert set(variables["params"]) == {"backbone"}


@pytest.mark.parametrize("field,value,option", [
    ("classifier", "sparse", "config.model.classifier"),
    ("sample_rate", 0.0, "config.model.sample_rate"),
    ("sample_rate", 1.5, "config.model.sample_rate"),
])
def test_bad_classifier_options_are_named_before_training(field, value, option):
  from configs import tiny
  config = tiny.get_config()
  config.model.classifier = "sharded"
  config.model[field] = value
  with pytest.raises(ValueError, match=option.replace(".", r"\.")):
    trainer.check_train_config(config)
  with pytest.raises(ValueError, match=option.replace(".", r"\.")):
    models.make_models(config, num_classes=10, num_landmarks=51)
  dense = tiny.get_config()
  dense.model.sample_rate = 0.3
  with pytest.raises(ValueError, match=r"config\.model\.sample_rate=0\.3.*sharded"):
    trainer.check_train_config(dense)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Batch 8: 10 rows a device (40 identities), K = max(5, 8) = 8, so negatives are sampled.
SHARDED = ("--config.model.classifier=sharded", "--config.model.sample_rate=0.5",
           "--config.train.batch_size=8", "--config.train.baseline_epochs=1")


@pytest.mark.slow  # two tiny runs, one SIGKILLed, and an evaluation on one device
def test_sharded_tiny_run_resumes_bit_exactly_and_evaluates_on_one_device(tmp_path):
  from aprn_jax import run
  from configs import tiny
  import test_end_to_end as e2e
  config = tiny.get_config()
  config.model.update(classifier="sharded", sample_rate=0.5)
  config.train.update(batch_size=8, baseline_epochs=1)
  config.eval.benchmarks = ("cfp_fp",)
  config.data.data_dir = str(tmp_path / "data")
  workdir, killed = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
  results = run.main(config, workdir, "train")
  data = run.data_lib.load(config, workdir)
  assert partial_fc.sample_size(partial_fc.shard_rows(data.num_classes, DEVICES), 0.5, 8) < (
      partial_fc.shard_rows(data.num_classes, DEVICES))

  command = e2e.main_command(config, killed, *SHARDED, "--config.eval.benchmarks=()")
  kill.run_until_checkpoint(command, os.path.join(killed, "baseline", "checkpoints"))
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)
  for phase in ("baseline", "aprn"):
    e2e.assert_same_end(config, workdir, killed, phase)
  state, _ = e2e.final_state(config, killed, "aprn")
  # Rows on the 4 devices (the tiny config's Softmax head: kernel and bias per class).
  assert set(state.classifier.params) == {"kernel", "bias"}
  assert all(x.shape[0] == DEVICES for x in jax.tree.leaves(state.classifier.params))

  env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
      "device_count=4", "device_count=1"))
  out = subprocess.run(e2e.main_command(config, killed, *SHARDED, "--mode=eval",
                                        "--config.eval.benchmarks=('cfp_fp',)"),
                       cwd=REPO, env=env, check=True, capture_output=True, text=True)
  assert "restored the recognizer" in out.stdout
  # What export and embed restore: the backbone, without the classifier.
  from aprn_jax import export
  assert set(export.restore(killed).variables["params"]) == {"backbone"}
  with open(os.path.join(killed, "eval.json")) as f:
    evaluated = json.load(f)
  for phase in ("baseline", "aprn"):
    assert evaluated[phase]["cfp_fp"]["accuracy"] == pytest.approx(
        results[phase]["cfp_fp"]["accuracy"], abs=0.01)


@pytest.mark.slow  # runs the benchmark script end to end (a subprocess per configuration)
def test_classifier_benchmark_reports_every_variant(tmp_path):
  out = tmp_path / "out.jsonl"
  proc = subprocess.run(
      [sys.executable, "benchmarks/classifier.py", "--devices=2", "--num_classes=1000",
       "--steps=1", "--warmup=0", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out.read_text().strip() == proc.stdout.strip().splitlines()[-1]
  runs = {r["variant"]: r for r in record["runs"]}
  assert set(runs) == {"backbone", "dense", "sharded_1.0", "sharded_0.1"}
  for name in ("dense", "sharded_1.0", "sharded_0.1"):
    assert runs[name]["ran"] and runs[name]["step_s"] > 0, runs[name]
    assert runs[name]["classifier_mib_per_device"] == pytest.approx(
        runs[name]["xla_memory_mib_per_device"] - runs["backbone"]["xla_memory_mib_per_device"])
  # The rows and momentum one device holds: half the dense head's on 2 devices (+ the count).
  assert runs["sharded_1.0"]["classifier_state_mib_per_device"] == pytest.approx(
      runs["dense"]["classifier_state_mib_per_device"] / 2, rel=1e-3)
  assert runs["sharded_0.1"]["sample_size"] == 50 and runs["sharded_1.0"]["sample_size"] == 500
  ratios = {k: v for r in record["ratios"] for k, v in r.items()}
  assert ratios["sharded_1.0_over_dense"] == pytest.approx(
      runs["sharded_1.0"]["classifier_mib_per_device"]
      / runs["dense"]["classifier_mib_per_device"])
