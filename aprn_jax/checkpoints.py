"""Orbax checkpoints of a phase: recognizer, discriminator and the rest of the train state
as separate items, so evaluation restores the recognizer alone.

Orbax writes each step to a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact. Restoring onto a target made on this machine
places the arrays on its devices, whatever device count wrote them. Orbax opens its folder
through etils.epath: local paths, file:// (as its local path) and gs:// (input_pipeline/files.py).
"""
import jax
import orbax.checkpoint as ocp

from aprn_jax.models import partial_fc
from input_pipeline import files

# "classifier": the sharded identity classifier's rows in class order, held by runs with
# config.model.classifier=sharded only (the dense head is in "recognizer").
ITEMS = ("recognizer", "discriminator", "train", "classifier")


def manager(directory, keep=None, read_only=False):
  """The phase's checkpoint manager. Writing is a step of every process of a job (each saves
  its share; all wait for the save); reading is this process's alone, so process 0 can read a
  checkpoint for a report while the others do not."""
  multiprocessing = ocp.options.MultiprocessingOptions()
  if read_only:
    multiprocessing = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()})
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only,
                                         multiprocessing_options=multiprocessing)
  return ocp.CheckpointManager(files.abspath(files.local_path(directory)), item_names=ITEMS,
                               options=options)


def _split(state, classifier=partial_fc.to_global):
  items = {"recognizer": state.recognizer, "discriminator": state.discriminator,
           "train": {"step": state.step, "rng": state.rng, "recognizer_opt": state.recognizer_opt,
                     "discriminator_opt": state.discriminator_opt}}
  if state.classifier is not None:  # in class order, so it restores on any device count
    items["classifier"] = classifier(state.classifier)
  return items


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
  items = _split(state, partial_fc.global_shapes)
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{k: ocp.args.StandardRestore(_abstract(v)) for k, v in items.items()}))
  train = restored["train"]
  classifier = state.classifier
  if classifier is not None:  # the shard layout of this state's device count
    classifier = partial_fc.from_global(jax.device_get(restored["classifier"]), classifier)
  return state.replace(recognizer=restored["recognizer"], discriminator=restored["discriminator"],
                       step=train["step"], rng=train["rng"],
                       recognizer_opt=train["recognizer_opt"],
                       discriminator_opt=train["discriminator_opt"], classifier=classifier)


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


def restore_classifier(directory, like, step=None):
  """The sharded classifier (rows and optimizer state) of a phase's checkpoint at `step`
  (default: the latest), laid out for the device count of `like` (a `partial_fc.Shards`)."""
  tree, _ = restore_item(directory, "classifier", partial_fc.global_shapes(like), step)
  return partial_fc.from_global(jax.device_get(tree), like)


def restore_recognizer(directory, target, step=None):
  """R's variables alone from a phase's checkpoints (the discriminator is not read)."""
  return restore_item(directory, "recognizer", target, step)
