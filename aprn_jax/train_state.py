"""The train state: two parameter trees, their BatchNorm statistics and two optimizers.

Plain data (a pytree of arrays), so a checkpoint is the state itself; the two optax
transforms are rebuilt from the config and passed to the step.
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from aprn_jax.models import partial_fc


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  rng: jax.Array          # raw uint32 key data (checkpoints hold plain arrays)
  recognizer: Any          # {'params': {'backbone', 'head'}, 'batch_stats': ...}
  discriminator: Any       # {'params': ..., 'batch_stats': ...}
  recognizer_opt: Any
  discriminator_opt: Any
  # The sharded identity classifier (partial_fc.Shards: rows and their R-optimizer state,
  # split over the devices); None with the dense head, which is in `recognizer`.
  classifier: Any = None


def device_axes(sharded):
  """pmap's in/out axes of a state: all replicated (None), but for a sharded classifier,
  whose leaves lead with the device axis (0)."""
  if not sharded:
    return None
  return TrainState(step=None, rng=None, recognizer=None, discriminator=None,
                    recognizer_opt=None, discriminator_opt=None, classifier=0)


def lr_schedule(optim_cfg, steps_per_epoch, update_period=1):
  """Piecewise-constant learning rate by epoch, counted in the optimizer's own updates."""
  updates_per_epoch = steps_per_epoch / update_period
  boundaries = {int(round(epoch * updates_per_epoch)): optim_cfg.lr_decay
                for epoch in optim_cfg.lr_decay_epochs}
  return optax.piecewise_constant_schedule(optim_cfg.lr, boundaries)


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(optim_cfg, steps_per_epoch, update_period=1, option="config.optim"):
  """Weight decay added to the gradient (as torch.optim.SGD and torch.optim.Adam do), then
  SGD with momentum (`name="sgd"`) or Adam (`"adam"`, betas 0.9 / 0.999; `momentum` unused),
  with `lr_schedule`. `option` names the config field in errors."""
  schedule = lr_schedule(optim_cfg, steps_per_epoch, update_period)
  if optim_cfg.name == "sgd":
    step = optax.sgd(schedule, momentum=optim_cfg.momentum)
  elif optim_cfg.name == "adam":
    step = optax.adam(schedule)
  else:
    raise ValueError(f"{option}.name={optim_cfg.name!r} is not an optimizer of this project; "
                     f"choose one of {OPTIMIZERS}")
  return optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay), step)


def init_variables(recognizer, discriminator, rng, image_size, tap):
  """Initial variables of R and D (D is initialised on the shape of R's tap).

  Compiled without XLA's backend optimisations: initialisation runs once, and optimising its
  many random-number kernels takes several times longer than running them unoptimised.
  """
  init = jax.jit(functools.partial(_init_variables, recognizer, discriminator,
                                   image_size=image_size, tap=tap))
  return init.lower(rng).compile(
      compiler_options={"xla_backend_optimization_level": 0})(rng)


def variable_shapes(recognizer, discriminator, image_size, tap):
  """Shapes and dtypes of R's and D's variables, without computing them (restore targets)."""
  return jax.eval_shape(functools.partial(_init_variables, recognizer, discriminator,
                                          image_size=image_size, tap=tap), jax.random.key(0))


def _init_variables(recognizer, discriminator, rng, *, image_size, tap):
  r_rng, d_rng = jax.random.split(rng)
  images = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  labels = jnp.zeros((2,), jnp.int32)
  r_vars = recognizer.init(r_rng, images, labels, train=False)
  taps = recognizer.apply(r_vars, images, labels, train=False)["taps"]
  d_vars = discriminator.init(d_rng, taps[tap], train=False)
  return r_vars, d_vars


CLASSIFIER_STREAM = 1  # folded into the init key for the sharded classifier's rows


def create(recognizer, discriminator, r_tx, d_tx, rng, image_size, tap, devices=None):
  """The initial state; a sharded classifier is split over `devices` (default: the local
  ones, those the pmapped step runs on) and trained by R's optimizer `r_tx`."""
  init_rng, state_rng = jax.random.split(rng)
  r_vars, d_vars = init_variables(recognizer, discriminator, init_rng, image_size, tap)
  classifier = None
  if partial_fc.is_sharded(recognizer):
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    dim = jax.eval_shape(lambda v, x: recognizer.apply(v, x, train=False)["embedding"],
                         r_vars, images).shape[-1]
    classifier = partial_fc.init(recognizer.head, jax.random.fold_in(init_rng, CLASSIFIER_STREAM),
                                 dim, r_tx, devices or jax.local_devices())
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(state_rng),
      recognizer=r_vars, discriminator=d_vars,
      recognizer_opt=r_tx.init(r_vars["params"]),
      discriminator_opt=d_tx.init(d_vars["params"]), classifier=classifier)
