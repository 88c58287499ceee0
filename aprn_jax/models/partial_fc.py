"""The identity classifier sharded over devices, with Partial FC sampling (An et al., CVPR 2022).

With millions of identities the classifier, not the backbone, fills the devices: 2M ids x 512
dimensions is a 1-billion-parameter matrix, and its momentum and logits again. Here each of
the N devices of the pmapped step (axis `batch`) holds a contiguous block of the class
centres as rows, Cs = ceil(C / N) of them: device d holds classes d * Cs .. (d + 1) * Cs - 1.
The rows from C up to N * Cs pad the last blocks: they start at zero, get no gradient, so
weight decay and momentum leave them at zero, and every softmax masks them out.

One step, on every device (`loss_and_sample_grads`, then `update`):
- the embeddings and labels of the global batch of B images are all-gathered;
- the device chooses its classes: all Cs rows (sample_rate 1.0: model parallel), or a sample
  of K (below);
- logits of the B embeddings against those rows, with the configured head's margin on the
  target (`heads.margin_logits`, the formula of the dense heads);
- the log-softmax over all devices' logits is normalised with the cross-device max (pmax)
  and sum of exponentials (psum); the loss is the mean cross-entropy over the global batch;
- its gradient with respect to the logits, (softmax - one-hot) / B, is pulled back through
  the device's logits: the device's rows get their whole gradient (no other device holds
  them, so it is not averaged), the embeddings get the sum of every device's part
  (psum_scatter hands each device the rows of its own images).
Only the device's own rows get gradients and optimizer state (R's optimizer, `Shards.opt`).

Memory, beyond the rows and their optimizer state: the step holds two (B, K) float32 arrays
(the scores and their cotangent; the margin is computed for the B targets only, everything
else of that shape is recomputed where it is used), and the rows' gradient is one (K, D)
product (written out, `_pull_back`) that XLA places in the buffer of the updated rows. No
normalised copy of the rows is made: the rows' norms scale the scores' columns. A sampled
step holds (B, K) arrays and a (K, D) gradient only (`update`). Measured with
benchmarks/classifier.py (docs/benchmarks.md, "Millions of identities (Partial FC)").

Sampling (sample_rate < 1): the sample size is fixed per run, K = min(Cs, max(ceil(sample_rate
x Cs), B)). A global batch holds at most B distinct positive classes, so no device ever has
more positives than K: every positive class is always kept. The rest of the K rows are
negatives drawn uniformly without replacement from the device's other real classes, with the
step's key (the seed's state key, the step and the device), so a resumed run draws the same
ones. When a device's positives outnumber ceil(sample_rate x Cs) its sample holds all of them
and fewer negatives (the configured rate is exceeded, the positives are never cut). Rows not
in the sample get no loss gradient that step; weight decay and momentum still apply to every
row of the shard, as for the dense head, so at sample_rate 1.0 the update is the dense head's.
Training accuracy is then measured against the sampled classes only (optimistic).

Checkpoints hold the rows in class order, padding dropped (`to_global`), and a restore lays
them out again for the device count at hand (`from_global`). The step splits the classes over
every device of the pmap, all hosts' included, host by host (process p's local device i holds
shard p x local devices + i). Over several hosts a save gathers every host's rows onto each
host first (`to_global`: the whole classifier and its optimizer state in each host's memory
for the save, as the dense head always is), and a restore keeps each host's own rows.
"""
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax

from aprn_jax.models import heads, layers

CLASSIFIERS = ("dense", "sharded")


def check_config(model_cfg):
  """Errors naming config.model.classifier / sample_rate, before any work is done."""
  classifier = model_cfg.get("classifier", "dense")
  rate = model_cfg.get("sample_rate", 1.0)
  if classifier not in CLASSIFIERS:
    raise ValueError(f"config.model.classifier={classifier!r} is not a classifier of this "
                     f"project; choose one of {CLASSIFIERS}")
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
    raise ValueError(f"config.model.sample_rate={rate!r} must be a number in (0, 1]")
  if classifier == "dense" and rate != 1.0:
    raise ValueError(f"config.model.sample_rate={rate} samples the sharded classifier only; "
                     f"set config.model.classifier='sharded' (or sample_rate=1.0)")


class ShardedHead(nn.Module):
  """The head's settings for the sharded classifier. It holds no parameters: the rows are the
  train state's `classifier` (`Shards`) and the step computes the loss
  (`loss_and_sample_grads`), so the recognizer's variables (and its checkpoint item) are the
  backbone's alone."""
  num_classes: int
  softmax: bool = False  # Softmax (kernel and bias per class), else cosine rows with margins
  s: float = 64.0
  m1: float = 1.0
  m2: float = 0.0
  m3: float = 0.0
  sample_rate: float = 1.0

  def __call__(self, embedding, labels):
    return None, None


@flax.struct.dataclass
class Shards:
  """The sharded classifier of a train state. Every leaf leads with the device axis: rows
  (devices, Cs, ...) of the parameters and of the optimizer's per-parameter state, and
  (devices,) for the optimizer's scalars (its step count), one copy per device."""
  params: Any
  opt: Any
  num_classes: int = flax.struct.field(pytree_node=False)


def is_sharded(recognizer):
  return isinstance(getattr(recognizer, "head", None), ShardedHead)


def shard_rows(num_classes, num_shards):
  return -(-num_classes // num_shards)


def sample_size(rows, sample_rate, global_batch):
  """K: the rows a device keeps each step (see the module docstring)."""
  if sample_rate >= 1.0:
    return rows
  return min(rows, max(math.ceil(sample_rate * rows), global_batch))


def init(head, rng, embedding_dim, tx, devices):
  """Shards for `devices`, with `tx` (R's optimizer) initialised on them.

  Each class's row is drawn from (rng, class id) with the dense head's initializer (Softmax:
  flax Dense's lecun normal over the embedding and a zero bias; margin heads: normal(0.01)),
  so a run starts from the same centres on any device count. Each device draws its own rows.
  Over several hosts the classes split over all their devices, in the pmap's device order.
  """
  num_shards = len(devices) * jax.process_count()
  rows = shard_rows(head.num_classes, num_shards)

  def row(class_id):
    key = jax.random.fold_in(rng, class_id)
    if head.softmax:
      return {"kernel": nn.initializers.lecun_normal()(key, (embedding_dim, 1))[:, 0],
              "bias": jnp.zeros((), jnp.float32)}
    return {"centres": nn.initializers.normal(0.01)(key, (embedding_dim,))}

  def shard(index):
    classes = index * rows + jnp.arange(rows)
    params = jax.vmap(row)(classes)
    real = classes < head.num_classes
    params = jax.tree.map(
        lambda p: jnp.where(real.reshape((-1,) + (1,) * (p.ndim - 1)), p, 0), params)
    return Shards(params, tx.init(params), head.num_classes)

  first = jax.process_index() * len(devices)
  return jax.pmap(shard, devices=devices)(first + jnp.arange(len(devices)))


def _unit(v):
  return v * jax.lax.rsqrt(jnp.sum(v * v, -1, keepdims=True) + 1e-12)


def choose(head, key, labels, rows, first):
  """(rows chosen, sorted; each image's target position among them, K where the target is on
  another device) for one device whose rows start at class `first`; `labels`: the global
  batch's."""
  size = sample_size(rows, head.sample_rate, labels.shape[0])
  local = jnp.where((labels >= first) & (labels < first + rows), labels - first, rows)
  if size == rows:
    return jnp.arange(rows), local
  positive = jnp.zeros(rows, jnp.bool_).at[local].set(True, mode="drop")
  score = jax.random.uniform(key, (rows,))
  score = jnp.where(positive, 2.0, score)  # above every negative's score in [0, 1)
  score = jnp.where(first + jnp.arange(rows) < head.num_classes, score, -1.0)  # padding last
  chosen = jnp.sort(jax.lax.top_k(score, size)[1])
  position = jnp.full(rows + 1, size).at[chosen].set(jnp.arange(size))[local]
  return chosen, position


def _scores(head, params, embedding):
  """(B, K) scores of the embeddings against the rows `params` and what their gradient needs:
  the margin heads' cosines (the rows' norms scale the product's columns, so no normalised
  copy of the rows is made), the Softmax head's logits."""
  if head.softmax:
    return embedding @ params["kernel"].T + params["bias"], None
  inverse_norm = jax.lax.rsqrt(jnp.sum(params["centres"] ** 2, -1) + 1e-12)
  unit, unit_vjp = jax.vjp(_unit, embedding)
  return (unit @ params["centres"].T) * inverse_norm, (inverse_norm, unit, unit_vjp)


def _target_logits(head, target_scores):
  """Training logits of the targets from their (B,) scores: the head's margin."""
  if head.softmax:
    return target_scores
  return heads.margin_logits(target_scores[:, None], jnp.zeros(target_scores.shape, jnp.int32),
                             s=head.s, m1=head.m1, m2=head.m2, m3=head.m3)[:, 0]


def _pull_back(head, params, embedding, scores, saved, d_scores):
  """(the rows' gradient, the embeddings') from the scores' cotangent d_scores (B, K).

  Written out rather than left to autodiff so that the rows' gradient is one (K, D) product
  that the optimizer's update consumes in place: for the margin heads, with z = (u . w_r) /
  |w_r| (u the unit embedding),
      d w_r = (1 / |w_r|) sum_b dz_br u_b  -  (1 / |w_r|^2) (sum_b dz_br z_br) w_r,
  the second term a per-row multiple of the rows. Autodiff's version of the same formula
  made XLA's CPU compiler put that term in a second (K, D) buffer, live with the first.
  """
  if head.softmax:
    return ({"kernel": d_scores.T @ embedding, "bias": jnp.sum(d_scores, 0)},
            d_scores @ params["kernel"])
  inverse_norm, unit, unit_vjp = saved
  d_dots = d_scores * inverse_norm
  per_row = inverse_norm ** 2 * jnp.sum(d_scores * scores, 0)
  d_centres = d_dots.T @ unit - per_row[:, None] * params["centres"]
  (d_embedding,) = unit_vjp(d_dots @ params["centres"])
  return {"centres": d_centres}, d_embedding


def loss_and_sample_grads(head, params, embedding, labels, key, axis):
  """Inside a pmap over `axis`: (loss, accuracy, embedding cotangent, the chosen rows'
  gradient, the chosen rows' indices or None when all Cs rows are chosen).

  `params`: this device's rows; `embedding` (b, D) float32 and `labels` (b,): this device's
  images. The loss and accuracy are the global batch's (the same on every device). The
  embedding cotangent is the gradient of this device's share of the loss as the dense head
  computes it (the mean over its own b images), so the step's pmean of R's gradients gives
  the gradient of the global mean, as with the dense head.

  Memory: the (B, K) arrays are the step's largest after the rows, so only the scores and
  their cotangent are materialised; the margin is computed for the B targets alone and every
  other (B, K) quantity (logits, exponentials, softmax) is recomputed inside the reductions
  and the cotangent that use it.
  """
  embedding = jax.lax.all_gather(embedding, axis, tiled=True)  # (B, D), in device order
  labels = jax.lax.all_gather(labels, axis, tiled=True)
  batch = labels.shape[0]
  rows = jax.tree.leaves(params)[0].shape[0]
  index = jax.lax.axis_index(axis)
  first = index * rows
  chosen, position = choose(head, jax.random.fold_in(key, index), labels, rows, first)
  size = chosen.shape[0]
  if size < rows:
    params = jax.tree.map(lambda p: p[chosen], params)
  real = (first + chosen < head.num_classes)[None]
  is_target = position[:, None] == jnp.arange(size)[None]
  has_target = position < size  # the image's class is one of this device's chosen rows
  scale = 1.0 if head.softmax else head.s  # non-target logits: scale x score (no margin)

  scores, saved = _scores(head, params, embedding)
  target_scores = jnp.take_along_axis(scores, jnp.minimum(position, size - 1)[:, None], 1)[:, 0]
  target_logits, d_target = jax.jvp(lambda z: _target_logits(head, z), (target_scores,),
                                    (jnp.ones_like(target_scores),))
  logits = jnp.where(real, jnp.where(is_target, target_logits[:, None], scale * scores),
                     -jnp.inf)
  top = jax.lax.pmax(jnp.max(logits, -1), axis)
  total = layers.sum_over_devices(jnp.sum(jnp.exp(logits - top[:, None]), -1), axis)
  target = layers.sum_over_devices(jnp.where(has_target, target_logits, 0.0), axis)
  loss = jnp.mean(jnp.log(total) + top - target)

  # d loss / d logits = (softmax - one-hot) / B; through the scores: scale for the others,
  # the margin's derivative for the target.
  softmax = jnp.exp(logits - top[:, None]) / total[:, None]
  target_softmax = jnp.exp(target_logits - top) / total
  target_term = ((target_softmax - 1.0) * d_target - scale * target_softmax) / batch
  d_scores = scale * softmax / batch + jnp.where(is_target, target_term[:, None], 0.0)
  row_grads, d_embedding = _pull_back(head, params, embedding, scores, saved, d_scores)
  devices = jax.lax.psum(1, axis)
  cotangent = devices * layers.sum_scatter_over_devices(d_embedding, axis)

  plain = jnp.where(real, scale * scores, -jnp.inf)  # the logits without margin
  best = jax.lax.pmax(jnp.max(plain, -1), axis)
  mine = layers.sum_over_devices(jnp.where(has_target, scale * target_scores, 0.0), axis)
  accuracy = jnp.mean(mine >= best)
  return loss, accuracy, cotangent, row_grads, (chosen if size < rows else None)


def loss_and_grads(head, params, embedding, labels, key, axis):
  """`loss_and_sample_grads` with the rows' gradient for all Cs rows of the device (zero
  outside the sample): (loss, accuracy, embedding cotangent, the rows' gradient)."""
  loss, accuracy, cotangent, grads, chosen = loss_and_sample_grads(
      head, params, embedding, labels, key, axis)
  if chosen is not None:
    grads = jax.tree.map(lambda p, g: jnp.zeros_like(p).at[chosen].set(g), params, grads)
  return loss, accuracy, cotangent, grads


def update(tx, shards, grads, chosen):
  """`shards` (this device's, inside the pmap) after one step of R's optimizer `tx` on the
  gradient of `loss_and_sample_grads`: every row is updated (weight decay and momentum apply
  to all, as for the dense head), the chosen rows with their gradient, the others with none.

  With a sample (`chosen`, K rows), the rows are updated with a zero gradient, the chosen
  rows apart from their own gradient, parameters and optimizer state, and each chosen row
  takes the second result: the step never holds a (Cs, D) gradient mostly of zeros, which
  XLA kept as a buffer of its own (the update's two outputs, parameters and state, both read
  it), and a sampled step needs less memory than a full one. This equals the update with
  that gradient because R's optimizers (weight decay, then SGD with momentum or Adam:
  `train_state.make_optimizer`) act on each parameter element on its own; their scalars
  (the step count) advance alike in both calls.
  """
  def apply(g, opt, params):
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt

  if chosen is None:
    params, opt = apply(grads, shards.opt, shards.params)
    return shards.replace(params=params, opt=opt)
  is_row = lambda x: jnp.ndim(x) >= 1  # inside the pmap: (Cs, ...) rows, () scalars
  take = lambda x: x[chosen] if is_row(x) else x
  params, opt = apply(jax.tree.map(jnp.zeros_like, shards.params), shards.opt, shards.params)
  part_params, part_opt = apply(grads, jax.tree.map(take, shards.opt),
                                jax.tree.map(take, shards.params))
  # Each row reads its result by its slot in the sample (a gather from the (K, ...) results)
  # rather than the results being scattered into the updated rows: each output is then one
  # elementwise pass that XLA fuses, where the scatter made it keep the zero-gradient state
  # as a buffer of its own (the new parameters read it) and copy it.
  rows = jax.tree.leaves(shards.params)[0].shape[0]
  size = chosen.shape[0]
  slot = jnp.full(rows, size).at[chosen].set(jnp.arange(size), unique_indices=True)

  def put(full, part):
    if not is_row(full):
      return full
    in_sample = (slot < size).reshape((-1,) + (1,) * (full.ndim - 1))
    return jnp.where(in_sample, part[jnp.minimum(slot, size - 1)], full)
  return shards.replace(params=jax.tree.map(put, params, part_params),
                        opt=jax.tree.map(put, opt, part_opt))


def _is_rows(shape):
  return len(shape) >= 2  # (devices, Cs, ...); (devices,) is a per-device scalar


def to_global(shards):
  """{'params', 'opt'} as numpy, each row leaf (C, ...) in class order (padding dropped) and
  each per-device scalar once: the layout checkpoints hold, whatever the device count."""
  def one(x):
    x = np.asarray(jax.device_get(x))  # this host's devices
    if not _is_rows(x.shape):
      return x[0]
    if jax.process_count() > 1:  # every host's rows, in shard order (hosts in turn)
      x = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x.reshape((-1,) + x.shape[2:])[:shards.num_classes]
  return jax.tree.map(one, {"params": shards.params, "opt": shards.opt})


def global_shapes(shards):
  """Shapes and dtypes of `to_global(shards)`, without reading the arrays (restore targets)."""
  def one(x):
    shape = ((shards.num_classes,) + tuple(x.shape[2:]) if _is_rows(x.shape)
             else tuple(x.shape[1:]))
    return jax.ShapeDtypeStruct(shape, x.dtype)
  return jax.tree.map(one, {"params": shards.params, "opt": shards.opt})


def from_global(tree, like):
  """`to_global`'s layout back to Shards shaped like `like` (this host's devices, the rows of
  every host's), as numpy: this host's shards."""
  def one(x, target):
    x = np.asarray(x)
    if not _is_rows(target.shape):
      return np.broadcast_to(x, target.shape).copy()
    devices, rows = target.shape[:2]
    if x.shape[0] != like.num_classes or x.shape[1:] != tuple(target.shape[2:]):
      raise ValueError(f"a classifier leaf of shape {x.shape} does not fit "
                       f"{like.num_classes} classes of shape {tuple(target.shape[2:])}")
    shards = devices * jax.process_count()
    padded = np.zeros((shards * rows,) + x.shape[1:], x.dtype)
    padded[:like.num_classes] = x
    first = jax.process_index() * devices
    return padded.reshape((shards,) + tuple(target.shape[1:]))[first:first + devices]
  return Shards(jax.tree.map(one, tree["params"], like.params),
                jax.tree.map(one, tree["opt"], like.opt), like.num_classes)
