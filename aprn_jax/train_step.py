"""One training step of R (recognizer) and D (pose discriminator), Eq. 1-2.

    L = Lc(R) + alpha * V(D, R')

One forward pass of R yields the identity logits and the tapped map f = R'(x); one forward
pass of D yields y = D(f). The L1 gradients dL1(y, l)/dy and dL1(y, l_mean)/dy are mixed per
side by the loss variant (losses.ROUTING) and pulled back through D twice: once to D's
parameters (D's update), once to f (the pose gradient for R', with D's parameters held
fixed — the stop-gradient of Eq. 2). The f-cotangent then joins the identity loss's in a single
backward pass of R, so only the layers below the tap get the pose gradient. With
`with_pose=False` (the baseline phase) D is not run at all. With `train_recognizer=False`
(D's warm-up at the start of the APRN phase) R runs forward only, as in training, and stays as
it is (parameters, statistics, optimizer); D alone is trained.

Metrics: identity loss and accuracy; with D, its L1 to the truth (`d_l1`) and to the mean face
(`adversarial_l1`), the L1 of answering the mean face (`truth_to_mean_l1`) and their ratio
`d_over_mean_face` (below 1: D beats the constant answer).

The step is written for `jax.pmap(..., axis_name='batch')`: gradients and metrics are averaged
across devices, and BatchNorm statistics are synchronised by the modules' `axis_name`, so a
step on N devices equals a step on one device with the same global batch. With
`ordered_reductions` (config.train.ordered_reductions) each of those sums is an all-gather
added in device order, so a job gives the same floats however its devices are split over
processes (the APRN phase's L1 signs turn an all-reduce's rounding into larger differences).

With config.model.classifier=sharded the recognizer ends at the embedding and the classifier's
rows are `state.classifier`, split over the devices (`models.partial_fc`): the identity loss,
its embedding cotangent and each device's row gradients come from
`partial_fc.loss_and_sample_grads`; the embedding cotangent joins R's backward pass as the
dense loss's would, and every device updates its own rows with R's optimizer
(`partial_fc.update`, no pmean).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aprn_jax import losses, train_state
from aprn_jax.models import layers, partial_fc

AXIS = "batch"


def _select(flag, new, old):
  return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def _is_on(step, period):
  return (step % period) == 0


def train_step(state, batch, mean_face, *, ordered_reductions=False, **static):
  """Returns (new_state, metrics). `batch`: image, label, landmarks; `mean_face`: (M, 2).
  `ordered_reductions`: every cross-device sum in device order (layers.ordered_reductions)."""
  with layers.ordered_reductions(ordered_reductions):
    return _train_step(state, batch, mean_face, **static)


def _train_step(state, batch, mean_face, *, recognizer, discriminator, r_tx, d_tx,
                tap, variant="adversarial", alpha=0.2, d_period=1, adv_period=1,
                with_pose=True, train_recognizer=True):
  images, labels, landmarks = batch["image"], batch["label"], batch["landmarks"]
  (d_true, d_mean), (r_true, r_mean) = losses.routing(variant)
  if not (with_pose or train_recognizer):
    raise ValueError("a step that trains neither R nor D does nothing")

  sharded = partial_fc.is_sharded(recognizer)

  def recognizer_forward(params):
    out, new_vars = recognizer.apply(
        {"params": params, "batch_stats": state.recognizer["batch_stats"]},
        images, labels, train=True, mutable=["batch_stats"])
    if sharded:  # the classifier's rows are state.classifier: it takes the embedding
      identity, accuracy = out["embedding"].astype(jnp.float32), None
    else:
      identity = losses.identity_loss(out["logits"], labels)
      accuracy = jnp.mean(jnp.argmax(out["plain_logits"], -1) == labels)
    return (identity, out["taps"][tap]), (new_vars["batch_stats"], accuracy)

  if train_recognizer:
    (identity, f), r_vjp, (r_stats, accuracy) = jax.vjp(
        recognizer_forward, state.recognizer["params"], has_aux=True)
  else:  # D's warm-up: R's forward pass alone; its new statistics are dropped
    (identity, f), (_, accuracy) = recognizer_forward(state.recognizer["params"])
  if sharded:  # negatives drawn with the step's key: (seed, phase) state key, step, device
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    id_loss, accuracy, id_cotangent, row_grads, chosen = partial_fc.loss_and_sample_grads(
        recognizer.head, state.classifier.params, identity, labels, key, AXIS)
  else:
    id_loss, id_cotangent = identity, jnp.ones_like(identity)
  metrics = {"identity_loss": id_loss, "accuracy": accuracy}

  f_cotangent = jnp.zeros_like(f)
  new_discriminator, new_d_opt = state.discriminator, state.discriminator_opt
  if with_pose:
    def discriminator_forward(params, features):
      y, new_vars = discriminator.apply(
          {"params": params, "batch_stats": state.discriminator["batch_stats"]},
          features, train=True, mutable=["batch_stats"])
      return y, new_vars["batch_stats"]

    y, d_vjp, d_stats = jax.vjp(
        discriminator_forward, state.discriminator["params"], f, has_aux=True)
    l1_true, g_true = losses.l1_and_grad(y, landmarks)
    l1_mean, g_mean = losses.l1_and_grad(y, mean_face)
    metrics.update(d_l1=l1_true, adversarial_l1=l1_mean,
                   truth_to_mean_l1=losses.l1(landmarks, mean_face))

    d_on = _is_on(state.step, d_period)
    adv_on = _is_on(state.step, adv_period).astype(jnp.float32)
    d_grads, _ = d_vjp(alpha * (d_true * g_true + d_mean * g_mean))
    _, f_cotangent = d_vjp(alpha * adv_on * (r_true * g_true + r_mean * g_mean))

    d_grads = _mean_over_devices(d_grads)
    d_updates, d_opt = d_tx.update(d_grads, state.discriminator_opt,
                                   state.discriminator["params"])
    d_params = optax.apply_updates(state.discriminator["params"], d_updates)
    # D is updated only every d_period steps: params, momentum and statistics stay put.
    new_discriminator = _select(d_on, {"params": d_params, "batch_stats": d_stats},
                                state.discriminator)
    new_d_opt = _select(d_on, d_opt, state.discriminator_opt)

  new_recognizer, new_r_opt = state.recognizer, state.recognizer_opt
  new_classifier = state.classifier
  if train_recognizer:
    (r_grads,) = r_vjp((id_cotangent, f_cotangent))
    r_grads = _mean_over_devices(r_grads)
    r_updates, new_r_opt = r_tx.update(r_grads, state.recognizer_opt,
                                       state.recognizer["params"])
    new_recognizer = {"params": optax.apply_updates(state.recognizer["params"], r_updates),
                      "batch_stats": r_stats}
    if sharded:  # each device updates its own rows, whole: no other device holds them
      new_classifier = partial_fc.update(r_tx, state.classifier, row_grads, chosen)

  new_state = state.replace(
      step=state.step + 1, recognizer=new_recognizer, discriminator=new_discriminator,
      recognizer_opt=new_r_opt, discriminator_opt=new_d_opt, classifier=new_classifier)
  metrics = _mean_over_devices(metrics)
  if with_pose:  # a ratio of the batch means over all devices
    metrics["d_over_mean_face"] = metrics["d_l1"] / metrics["truth_to_mean_l1"]
  return new_state, metrics


def _mean_over_devices(tree):
  """The mean of `tree` over the step's devices (layers.mean_over_devices)."""
  return layers.mean_over_devices(tree, AXIS)


def pmap_train_step(**static):
  """The step pmapped over local devices: state and mean face replicated, batch sharded.

  The state stays one unreplicated pytree (in_axes/out_axes None), as in flax's imagenet
  example; the batch has a leading device axis.
  """
  step = lambda state, batch, mean_face: train_step(state, batch, mean_face, **static)
  state_axes = train_state.device_axes(partial_fc.is_sharded(static["recognizer"]))
  return jax.pmap(step, axis_name=AXIS, in_axes=(state_axes, 0, None),
                  out_axes=(state_axes, None))


def replicate(state):
  """Places `state` the way the pmapped step returns it (replicated on the local devices).

  A state made by jit or restored from a checkpoint sits on one device; passing it as is
  would make the step's second call compile a second program for the replicated output.
  """
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  replicated = jax.device_put(state.replace(classifier=None),
                              jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  if state.classifier is None:
    return replicated
  # The sharded classifier: device i gets its rows, laid out as the step returns them.
  return replicated.replace(classifier=jax.pmap(lambda rows: rows)(state.classifier))


def check_landmarks(name, array, num_landmarks):
  """Host-side check of a landmark array (a batch's or the mean face) before it reaches D.

  Raises ValueError naming the array when its point count is not M = num_landmarks or it
  holds NaN/inf (a NaN landmark would silently turn D's loss and gradients into NaN).
  """
  array = np.asarray(array)
  if array.ndim < 2 or array.shape[-2:] != (num_landmarks, 2):
    raise ValueError(f"{name} has shape {array.shape}; expected (..., {num_landmarks}, 2) "
                     f"for the discriminator's M = {num_landmarks} landmarks")
  bad = ~np.isfinite(array)
  if bad.any():
    raise ValueError(f"{name} holds {int(bad.sum())} non-finite values (NaN or inf), first at "
                     f"index {tuple(int(i) for i in np.argwhere(bad)[0])}")
  return array
