"""Orbax checkpoints of a phase: recognizer, discriminator and the rest of the train state
as separate items, so evaluation restores the recognizer alone.

Orbax writes each step to a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact. Restoring onto a target made on this machine
places the arrays on its devices, whatever device count wrote them.
"""
import os

import jax
import orbax.checkpoint as ocp

ITEMS = ("recognizer", "discriminator", "train")


def manager(directory, keep=None, read_only=False):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), item_names=ITEMS, options=options)


def _split(state):
  return {"recognizer": state.recognizer, "discriminator": state.discriminator,
          "train": {"step": state.step, "rng": state.rng, "recognizer_opt": state.recognizer_opt,
                    "discriminator_opt": state.discriminator_opt}}


def save(mngr, state):
  items = jax.device_get(_split(state))
  mngr.save(int(state.step), args=ocp.args.Composite(
      **{k: ocp.args.StandardSave(v) for k, v in items.items()}), force=True)
  mngr.wait_until_finished()


def _abstract(tree):
  """Shapes and dtypes of `tree`, placed on this process's first device."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def restore(mngr, state, step=None):
  """The state saved at `step` (default: the latest), shaped like `state`."""
  step = mngr.latest_step() if step is None else step
  items = _split(state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{k: ocp.args.StandardRestore(_abstract(v)) for k, v in items.items()}))
  train = restored["train"]
  return state.replace(recognizer=restored["recognizer"], discriminator=restored["discriminator"],
                       step=train["step"], rng=train["rng"],
                       recognizer_opt=train["recognizer_opt"],
                       discriminator_opt=train["discriminator_opt"])


def restore_item(directory, item, target, step=None):
  """(variables, step) of one item ('recognizer', 'discriminator') of a phase's checkpoint
  at `step` (default: the latest), shaped like `target`; the other items are not read."""
  mngr = manager(directory, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(_abstract(target))}))
  except Exception as e:  # orbax raises several types for unreadable or mismatched files
    raise ValueError(f"cannot restore the {item} of checkpoint step {step} in "
                     f"{directory}: {e}") from e
  return restored[item], step


def restore_recognizer(directory, target, step=None):
  """R's variables alone from a phase's checkpoints (the discriminator is not read)."""
  return restore_item(directory, "recognizer", target, step)
