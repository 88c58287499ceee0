"""Training phases: the baseline, then APRN fine-tuned from it (the paper's recipe).

Each phase lives in its own folder of the workdir (`baseline/`, `aprn/`) with its orbax
checkpoints, `metrics.jsonl`, TensorBoard events and, once finished, `done.json`. A finished
phase is not run again; an unfinished one resumes from its last checkpoint and, because every
batch is a pure function of (seed, step) and the RNG is in the checkpoint, ends with exactly
the parameters of an uninterrupted run. APRN starts from the baseline's final recognizer with
the learning rate scaled by `config.train.aprn_lr_scale` and a fresh discriminator that
answers the mean face. Its first `config.aprn.d_warmup_steps` steps train D alone on the
frozen recognizer, so the adversarial term starts against a D that beats the constant answer;
then `aprn_epochs` epochs of the full loss follow. D's optimizer is `config.aprn.d_optim`,
independent of R's. Every random stream comes from `seeds` (seed, phase, purpose).

Metric lines are logged at step 1, at the end of D's warm-up, every `log_every_steps` and at
the last step; each averages the steps since the previous line.
"""
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from aprn_jax import checkpoints, models, seeds, train_state, train_step
from aprn_jax.models import partial_fc
from input_pipeline import console, files, preprocess

PHASES = ("baseline", "aprn")


# TensorBoard's scalar plugin tag, written with core TF (the tensorboard package is only
# needed to view the events, not to write them).
_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


class NonFiniteLossError(RuntimeError):
  pass


def check_train_config(config):
  """Errors that name the config field, before any work is done."""
  train = config.train
  for phase in train.phases:
    if phase not in PHASES:
      raise ValueError(f"config.train.phases holds {phase!r}; allowed: {PHASES}")
  for name in ("batch_size", "log_every_steps", "checkpoint_every_steps"):
    if train[name] <= 0:
      raise ValueError(f"config.train.{name}={train[name]} must be positive")
  if train.checkpoint_every_steps % train.log_every_steps:
    raise ValueError(
        f"config.train.checkpoint_every_steps={train.checkpoint_every_steps} must be a multiple "
        f"of config.train.log_every_steps={train.log_every_steps} (so a resumed run logs the "
        f"same metric windows)")
  if config.aprn.d_warmup_steps < 0:
    raise ValueError(f"config.aprn.d_warmup_steps={config.aprn.d_warmup_steps} must be >= 0")
  for name in ("lr", "weight_decay"):
    if config.aprn.d_optim[name] < 0:
      raise ValueError(f"config.aprn.d_optim.{name}={config.aprn.d_optim[name]} must be >= 0")
  if config.aprn.d_optim.name not in train_state.OPTIMIZERS:
    raise ValueError(f"config.aprn.d_optim.name={config.aprn.d_optim.name!r} is not an "
                     f"optimizer of this project; choose one of {train_state.OPTIMIZERS}")
  partial_fc.check_config(config.model)
  devices = jax.device_count()
  if train.batch_size % devices:
    raise ValueError(f"config.train.batch_size={train.batch_size} is not divisible by the "
                     f"{devices} devices")


def phase_optim(config, phase):
  optim = ml_collections.ConfigDict(config.optim.to_dict())
  if phase == "aprn":
    optim.lr *= config.train.aprn_lr_scale
  return optim


def warmup_steps(config, phase):
  """Steps at the start of `phase` that train D alone (the APRN phase's D warm-up)."""
  return config.aprn.d_warmup_steps if phase == "aprn" else 0


def phase_steps(config, phase, num_examples):
  """(steps per epoch, the phase's steps: D's warm-up, then its epochs)."""
  steps_per_epoch = num_examples // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} is larger than the "
                     f"{num_examples} training examples")
  epochs = config.train[f"{phase}_epochs"]
  return steps_per_epoch, warmup_steps(config, phase) + int(round(epochs * steps_per_epoch))


def _checkpoint_dir(phase_dir):
  return os.path.join(phase_dir, "checkpoints")


def saved_phases(workdir):
  """The phases with a checkpoint folder in `workdir`, in training order; none is an error
  naming the workdir."""
  names = [name for name in PHASES
           if files.isdir(_checkpoint_dir(os.path.join(workdir, name)))]
  if not names:
    raise FileNotFoundError(f"no phase checkpoints under {workdir} (expected "
                            f"{', '.join(PHASES)} folders with checkpoints/)")
  return names


class PhaseCheckpoints:
  """One phase's models and saved checkpoints: what eval and analyse restore.

  data: the training data's description (`data.DataInfo`); the counts of training examples
  that make optimizers and steps are not needed here.
  """

  def __init__(self, config, data, workdir, phase):
    self.config, self.data, self.name = config, data, phase
    self.dir = os.path.join(workdir, phase)
    self.recognizer, self.discriminator = models.make_models(
        config, num_classes=data.num_classes, num_landmarks=data.num_landmarks,
        mean_face=data.mean_face, axis_name=train_step.AXIS)

  @property
  def done_path(self):
    return os.path.join(self.dir, "done.json")

  def is_done(self):
    return files.exists(self.done_path)

  def checkpoint_dir(self):
    return _checkpoint_dir(self.dir)

  def saved_recognizer(self, step=None):
    """(R's variables, step) of this phase's checkpoint at `step` (default: the last)."""
    target, _ = train_state.variable_shapes(self.recognizer, self.discriminator,
                                            self.config.data.image_size, self.config.aprn.tap)
    return checkpoints.restore_recognizer(self.checkpoint_dir(), target, step)

  def final_recognizer(self):
    """The recognizer variables of this phase's last checkpoint."""
    return self.saved_recognizer()[0]


class Phase(PhaseCheckpoints):
  """A phase to train: its checkpoints plus optimizers, schedules, steps and pmapped steps."""

  def __init__(self, config, data, workdir, phase):
    super().__init__(config, data, workdir, phase)
    self.steps_per_epoch, self.num_steps = phase_steps(config, phase, data.num_examples)
    self.warmup_steps = warmup_steps(config, phase)
    optim = phase_optim(config, phase)
    d_optim = config.aprn.d_optim
    self.r_schedule = train_state.lr_schedule(optim, self.steps_per_epoch)
    self.d_schedule = train_state.lr_schedule(d_optim, self.steps_per_epoch, config.aprn.d_period)
    self.r_tx = train_state.make_optimizer(optim, self.steps_per_epoch)
    self.d_tx = train_state.make_optimizer(d_optim, self.steps_per_epoch, config.aprn.d_period,
                                           option="config.aprn.d_optim")
    step_args = dict(
        recognizer=self.recognizer, discriminator=self.discriminator, r_tx=self.r_tx,
        d_tx=self.d_tx, tap=config.aprn.tap, variant=config.aprn.loss, alpha=config.aprn.alpha,
        d_period=config.aprn.d_period, adv_period=config.aprn.adv_period,
        with_pose=(phase == "aprn"), ordered_reductions=config.train.ordered_reductions)
    self.step_fn = train_step.pmap_train_step(**step_args)
    self.warmup_step_fn = (train_step.pmap_train_step(**step_args, train_recognizer=False)
                           if self.warmup_steps else None)

  def step_function(self, step):
    """The pmapped step that runs global step `step` (0-based): D's warm-up or the full one."""
    return self.warmup_step_fn if step < self.warmup_steps else self.step_fn

  def learning_rates(self, step):
    """(R's, D's) learning rate at global step `step`; each schedule counts its own updates."""
    r_updates = max(step - self.warmup_steps, 0)
    return (float(self.r_schedule(r_updates)),
            float(self.d_schedule(step // self.config.aprn.d_period)))

  def is_log_step(self, step_done):
    """Whether a metric line is written after `step_done` steps."""
    return (step_done % self.config.train.log_every_steps == 0
            or step_done in (1, self.warmup_steps, self.num_steps))

  def initial_state(self, init_recognizer=None):
    rng = seeds.key(self.config.seed, self.name, "init")
    state = train_state.create(self.recognizer, self.discriminator, self.r_tx, self.d_tx, rng,
                               self.config.data.image_size, self.config.aprn.tap)
    if init_recognizer is not None:
      state = state.replace(recognizer=init_recognizer,
                            recognizer_opt=self.r_tx.init(init_recognizer["params"]))
      if state.classifier is not None:  # the baseline's sharded rows, a fresh optimizer
        baseline = _checkpoint_dir(os.path.join(os.path.dirname(self.dir), "baseline"))
        rows = checkpoints.restore_classifier(baseline, state.classifier).params
        state = state.replace(classifier=state.classifier.replace(params=rows))
    return state

  def checkpoint_manager(self):
    return checkpoints.manager(self.checkpoint_dir(), keep=self.config.train.keep_checkpoints)


def _log_note(metrics, images_per_s, lrs):
  """What a metric line adds to the phase's progress: img/s, the metrics, R's/D's LR."""
  parts = [f"{images_per_s:.0f} img/s"] + [f"{k} {v:.4f}" for k, v in metrics.items()]
  return "  ".join(parts + [f"lr {lrs[0]:.2g}/{lrs[1]:.2g}"])


def _drop_metrics_after(path, step):
  """Keeps the metric lines up to `step`: those logged after the last checkpoint by a killed
  run are logged again by the resumed one."""
  with files.open(path) as f:
    kept = [line for line in f if json.loads(line)["step"] <= step]
  files.write_atomic(path, "".join(kept))


def train_phase(phase: Phase, init_recognizer=None, log_prefix=None):
  """Runs (or resumes) one phase to its last step; returns its final state.

  log_prefix: (phase name, step, total) -> text put before each printed metric line.
  """
  config, data = phase.config, phase.data
  lead = jax.process_index() == 0
  mngr = phase.checkpoint_manager()
  state = phase.initial_state(init_recognizer)
  if mngr.latest_step() is not None:
    state = checkpoints.restore(mngr, state)
    print(f"[{phase.name}] resumed from step {int(state.step)}", flush=True)
  state = train_step.replicate(state)
  first_step = int(state.step)

  batches = preprocess.train_batches(
      data.dataset_fn, num_examples=data.num_examples,
      global_batch_size=config.train.batch_size, crop_size=config.data.crop_size,
      image_size=config.data.image_size, seed=seeds.data_seed(config.seed, phase.name),
      start_step=first_step, num_landmarks=data.num_landmarks)
  writer = tf.summary.create_file_writer(os.path.join(phase.dir, "tensorboard")) if lead else None
  metrics_path = os.path.join(phase.dir, "metrics.jsonl")
  if lead and files.exists(metrics_path):
    _drop_metrics_after(metrics_path, first_step)
  window, window_start = [], time.time()
  last = {}
  # One bar per phase on a terminal; elsewhere one line per metric line.
  bar = console.Progress(f"[{phase.name}]", phase.num_steps, "steps", start=first_step,
                         every_s=None) if lead else None
  for step in range(first_step, phase.num_steps):
    batch = next(batches)
    train_step.check_landmarks("batch['landmarks']", batch["landmarks"], data.num_landmarks)
    batch = {k: batch[k] for k in ("image", "label", "landmarks")}
    state, metrics = phase.step_function(step)(state, batch, data.mean_face)
    window.append(metrics)
    step_done = step + 1
    at_checkpoint = step_done % config.train.checkpoint_every_steps == 0
    if phase.is_log_step(step_done):
      last = {k: float(np.mean([m[k] for m in jax.device_get(window)])) for k in window[0]}
      if not all(math.isfinite(v) for v in last.values()):
        if bar:
          bar.stop()
        raise NonFiniteLossError(
            f"[{phase.name}] non-finite loss at step {step_done}: {last}. Training stopped; "
            f"the last good checkpoint (step {mngr.latest_step()}) in {phase.dir} is kept. "
            f"Lower config.optim.lr or check the data.")
      lrs = phase.learning_rates(step)
      images_per_s = len(window) * config.train.batch_size / (time.time() - window_start)
      if lead:
        record = dict(step=step_done, **last, lr=lrs[0], d_lr=lrs[1], images_per_s=images_per_s)
        with files.open(metrics_path, "a") as f:
          f.write(json.dumps(record) + "\n")
        with writer.as_default(step=step_done):
          for k, v in record.items():
            if k != "step":
              tf.summary.write(k, tf.constant(v, tf.float32), metadata=_SCALAR)
        prefix = log_prefix(phase.name, step_done, phase.num_steps) if log_prefix else ""
        bar.label = f"{prefix}[{phase.name}]"
        bar.update(step_done, _log_note(last, images_per_s, lrs), log=True)
      window, window_start = [], time.time()
    elif bar:
      bar.update(step_done)
    if at_checkpoint or step_done == phase.num_steps:
      checkpoints.save(mngr, state)
  if bar:
    bar.close()
  if writer:
    writer.flush()
  if int(state.step) != phase.num_steps:  # resumed at the end: checkpoint exists already
    raise RuntimeError(f"[{phase.name}] ended at step {int(state.step)} of {phase.num_steps}")
  if lead:
    with files.open(phase.done_path, "w") as f:
      json.dump(dict(step=phase.num_steps, metrics=last), f)
  mngr.close()
  return state


def train(config, data, workdir, log_prefix=None):
  """Runs the configured phases in order; returns {phase: Phase} of the finished ones."""
  check_train_config(config)
  finished = {}
  for name in config.train.phases:
    phase = Phase(config, data, workdir, name)
    init_recognizer = None
    baseline = finished.get("baseline") or PhaseCheckpoints(config, data, workdir, "baseline")
    if name == "aprn" and baseline.is_done():
      init_recognizer = baseline.final_recognizer()
    if phase.is_done():
      print(f"[{name}] already finished in {phase.dir}; not run again", flush=True)
    else:
      train_phase(phase, init_recognizer, log_prefix)
    finished[name] = phase
  return finished
