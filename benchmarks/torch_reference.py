"""The APRN train step in PyTorch, for side-by-side timing with this project's (compare_torch.py).

PyTorch is an optional extra (requirements-bench.txt): nothing outside benchmarks/ and
tests/test_torch_reference.py imports it, and the project trains and tests without it.

The same networks as the JAX models of the config, with the same parameter counts
(`check_param_counts` asserts them against `aprn_jax.models.make_models`):
- R: the pre-activation ResNet of aprn_jax/models/resnet.py (the public code's layout,
  docs: REFERENCE section 2): 7x7/2 conv, BN, ReLU, 3x3/2 max-pool; bottleneck stages whose
  first block reads the activated stage input and has a 1x1 projection shortcut; BN + ReLU
  after each stage; the last map flattened into one dense layer to the embedding (no average
  pool). Its stride-2 3x3 convolutions pad 1 on both sides, as PyTorch's layers do, where the
  JAX model pads SAME (0 before, 1 after on even maps): the same weights, shapes and count of
  taps on the input, a one-pixel shift of the sampling grid.
- The identity head of aprn_jax/models/heads.py (softmax with bias; CosFace, ArcFace and the
  combined margin as a cosine classifier, with the same fallback past pi), in float32.
- D: Table 1 on config.aprn.tap (aprn_jax/models/discriminator.py): Conv3x3 (no bias) + BN +
  ReLU per width, stride 2 while the map is larger than the backbone's last, 3x3/2 max-pool,
  dense to 2M; its bias starts at the mean face and its kernel is scaled by 0.01.

The step (aprn_jax/train_step.py, losses.ROUTING for the variant): one forward of R gives the
logits and the tap f; one forward of D gives y = D(f). D is pulled back to its parameters with
the gradient of alpha * (D's share of the L1 terms); R is pulled back once, with the identity
loss and alpha * (R's share) flowing through D's input gradients only (`backward(inputs=...)`
leaves D's parameters out, the stop-gradient of Eq. 2). `form="two_forward"` is the public
code's shape of the same step: D on f.detach() for D's update, D on f again for R's term
(D's running statistics then move twice per step, as there). Two SGD optimizers (momentum,
weight decay added to the gradient, as optax.add_decayed_weights + optax.sgd in
aprn_jax/train_state.py), R's from config.optim, D's from config.aprn.d_optim.

Written for speed: channels-last memory (`channels_last`), in-place ReLUs after BatchNorm,
NHWC-order flattening (a view of a channels-last map, and the JAX model's order), fused or
foreach optimizer kernels, bfloat16 autocast when config.model.dtype is bfloat16 (convolutions
and dense layers; BatchNorm and the head in float32), cuDNN autotuning and TF32 on GPU
(`tf32`, what XLA's default float32 precision does there), and `torch.compile` of R
(`compile=True`; D stays eager so its two pull-backs can each skip the gradients they do
not need). No host synchronisation inside a step.
"""
import contextlib
import math

import torch
from torch import nn
import torch.nn.functional as F

from aprn_jax import losses
from benchmarks import flop_count

FORMS = ("once", "two_forward")


def _bn(channels):
  # flax BatchNorm(momentum=0.9, epsilon=1e-5): PyTorch's momentum is 1 - flax's.
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def _flatten_nhwc(x):
  """(B, C, H, W) -> (B, H*W*C) in NHWC order: a view for a channels-last map."""
  return x.permute(0, 2, 3, 1).flatten(1)


class PreActBottleneck(nn.Module):
  """BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1(4x); identity or projection."""

  def __init__(self, in_channels, width, stride, first_in_stage):
    super().__init__()
    self.first_in_stage = first_in_stage
    if first_in_stage:  # reads the activated stage input: no BN of its own
      self.shortcut = nn.Conv2d(in_channels, 4 * width, 1, stride, bias=False)
    else:
      self.bn_in = _bn(in_channels)
    self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    self.bn1 = _bn(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
    self.bn2 = _bn(width)
    self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)

  def forward(self, x):
    if self.first_in_stage:
      y, shortcut = x, self.shortcut(x)
    else:
      y, shortcut = F.relu(self.bn_in(x), inplace=True), x
    y = F.relu(self.bn1(self.conv1(y)), inplace=True)
    y = F.relu(self.bn2(self.conv2(y)), inplace=True)
    return self.conv3(y) + shortcut


class ResNet(nn.Module):
  """forward(images NCHW) -> (embedding, tap map)."""

  def __init__(self, model_cfg, image_size, tap):
    super().__init__()
    if model_cfg.backbone != "resnet":
      raise NotImplementedError(f"the PyTorch reference has the ResNet backbone only; "
                                f"config.model.backbone={model_cfg.backbone!r}")
    if tap not in flop_count.RESNET_TAPS:
      raise ValueError(f"config.aprn.tap={tap!r} is not a ResNet tap")
    stage_sizes = tuple(model_cfg.stage_sizes) or flop_count.RESNET_STAGE_SIZES[model_cfg.depth]
    width = model_cfg.width
    self.tap = tap
    self.stem_conv = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
    self.stem_bn = _bn(width)
    stages, stage_bns, channels = [], [], width
    for i, num_blocks in enumerate(stage_sizes):
      w = width * 2**i
      blocks = []
      for j in range(num_blocks):
        blocks.append(PreActBottleneck(channels, w, 2 if (i > 0 and j == 0) else 1, j == 0))
        channels = 4 * w
      stages.append(nn.Sequential(*blocks))
      stage_bns.append(_bn(channels))
    self.stages = nn.ModuleList(stages)
    self.stage_bns = nn.ModuleList(stage_bns)
    _, taps = flop_count.resnet_layers(model_cfg, image_size)
    last = taps["stage4"]
    self.embedding = nn.Linear(last[0] * last[1] * last[2], model_cfg.embedding_dim)

  def forward(self, x):
    x = F.relu(self.stem_bn(self.stem_conv(x)), inplace=True)
    x = F.max_pool2d(x, 3, 2, padding=1)
    tapped = x
    for i, (stage, bn) in enumerate(zip(self.stages, self.stage_bns)):
      x = F.relu(bn(stage(x)), inplace=True)
      if self.tap == f"stage{i + 1}":
        tapped = x
    return self.embedding(_flatten_nhwc(x)), tapped


class SoftmaxHead(nn.Module):
  def __init__(self, embedding_dim, num_classes):
    super().__init__()
    self.classifier = nn.Linear(embedding_dim, num_classes)

  def forward(self, embedding, labels):
    logits = self.classifier(embedding)
    return logits, logits


class MarginHead(nn.Module):
  """s * (cos(m1 * theta + m2) - m3) for the target class; the fallback of heads.margin_logits."""

  def __init__(self, embedding_dim, num_classes, s, m1, m2, m3):
    super().__init__()
    self.centres = nn.Parameter(torch.randn(embedding_dim, num_classes) * 0.01)
    self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

  def forward(self, embedding, labels):
    cos = F.normalize(embedding, dim=-1, eps=1e-6) @ F.normalize(self.centres, dim=0, eps=1e-6)
    plain = self.s * cos
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    with_margin = torch.cos(self.m1 * theta + self.m2)
    fallback = cos - self.m2 * math.sin(self.m2)
    target = torch.where(self.m1 * theta + self.m2 <= math.pi, with_margin, fallback) - self.m3
    is_target = F.one_hot(labels, cos.shape[-1]).bool()
    return self.s * torch.where(is_target, target, cos), plain


def make_head(model_cfg, num_classes):
  if model_cfg.get("classifier", "dense") != "dense":
    raise NotImplementedError("the PyTorch reference has the dense head only")
  margins = {"cosface": (1.0, 0.0, model_cfg.m), "arcface": (1.0, model_cfg.m, 0.0),
             "combined": (model_cfg.m1, model_cfg.m2, model_cfg.m3)}
  if model_cfg.head == "softmax":
    return SoftmaxHead(model_cfg.embedding_dim, num_classes)
  if model_cfg.head not in margins:
    raise ValueError(f"config.model.head={model_cfg.head!r} is not a head")
  return MarginHead(model_cfg.embedding_dim, num_classes, model_cfg.s, *margins[model_cfg.head])


class Discriminator(nn.Module):
  """Table 1's D on the tap: feature map (B, C, H, W) -> landmarks (B, M, 2)."""

  def __init__(self, config, image_size, num_landmarks, mean_face=None):
    super().__init__()
    _, taps = flop_count.resnet_layers(config.model, image_size)
    size, channels = taps[config.aprn.tap][0], taps[config.aprn.tap][-1]
    target = taps["stage4"][0]
    layers = []
    for width in flop_count.discriminator_widths(config, taps):
      stride = 2 if size > target else 1
      layers += [nn.Conv2d(channels, width, 3, stride, padding=1, bias=False), _bn(width),
                 nn.ReLU(inplace=True)]
      size, channels = (size + 2 - 3) // stride + 1, width
    self.convs = nn.Sequential(*layers)
    self.pool = config.aprn.d_pool in ("table", "max")
    if self.pool:
      size = (size + 2 - 3) // 2 + 1
    self.num_landmarks = num_landmarks
    self.landmarks = nn.Linear(size * size * channels, 2 * num_landmarks)
    with torch.no_grad():  # an untrained D answers (almost) the mean face
      self.landmarks.weight.mul_(0.01)
      if mean_face is None:
        self.landmarks.bias.zero_()
      else:
        self.landmarks.bias.copy_(torch.as_tensor(mean_face, dtype=torch.float32).reshape(-1))

  def forward(self, x):
    x = self.convs(x)
    if self.pool:
      x = F.max_pool2d(x, 3, 2, padding=1)
    return self.landmarks(_flatten_nhwc(x)).float().reshape(-1, self.num_landmarks, 2)


def param_count(module):
  return sum(p.numel() for p in module.parameters())


def jax_param_counts(config, num_classes, num_landmarks):
  """{'backbone', 'head', 'discriminator'}: the JAX models' parameter counts, by
  jax.eval_shape of their initialisation (nothing is computed)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from aprn_jax import models

  recognizer, disc = models.make_models(config, num_classes=num_classes,
                                        num_landmarks=num_landmarks)
  size = config.data.image_size

  def init():
    images, labels = jnp.zeros((1, size, size, 3)), jnp.zeros((1,), jnp.int32)
    r_vars = recognizer.init(jax.random.key(0), images, labels, train=False)
    tap = recognizer.apply(r_vars, images, labels, train=False)["taps"][config.aprn.tap]
    return r_vars["params"], disc.init(jax.random.key(1), tap, train=False)["params"]

  r_params, d_params = jax.eval_shape(init)
  count = lambda tree: int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))
  return {"backbone": count(r_params["backbone"]), "head": count(r_params["head"]),
          "discriminator": count(d_params)}


def _optimizer(params, optim_cfg, device):
  kind = torch.device(device).type
  # One fused kernel per step on GPU, a few multi-tensor ones on CPU.
  fast = {"fused": True} if kind == "cuda" else {"foreach": True}
  if optim_cfg.name == "sgd":
    return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay, **fast)
  if optim_cfg.name == "adam":  # betas 0.9 / 0.999, decay added to the gradient, as optax
    return torch.optim.Adam(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay,
                            **fast)
  raise ValueError(f"optimizer {optim_cfg.name!r}: sgd or adam")


class ReferenceStep:
  """R, D, their optimizers and the baseline and APRN steps, on `device`.

  `baseline(batch)` and `aprn(batch)` each run one training step in place and return the
  step's metrics as (unsynchronised) tensors; `synchronize()` waits for the device.
  A batch is `make_batch`'s: images NCHW (channels-last when set), labels, landmarks.
  """

  def __init__(self, config, *, num_classes, num_landmarks, device="cpu", mean_face=None,
               form="once", channels_last=True, compile=False, tf32=True, seed=0,
               check_counts=True):
    if form not in FORMS:
      raise ValueError(f"form={form!r}: one of {FORMS}")
    self.config, self.form, self.device = config, form, torch.device(device)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(seed)
    size = config.data.image_size
    self.backbone = ResNet(config.model, size, config.aprn.tap)
    self.head = make_head(config.model, num_classes)
    self.discriminator = Discriminator(config, size, num_landmarks, mean_face)
    self.counts = {"backbone": param_count(self.backbone), "head": param_count(self.head),
                   "discriminator": param_count(self.discriminator)}
    if check_counts:
      check_param_counts(self.counts, config, num_classes, num_landmarks)
    for module in (self.backbone, self.head, self.discriminator):
      module.to(self.device, memory_format=self.memory_format).train()
    if self.device.type == "cuda":
      torch.backends.cudnn.benchmark = True
      torch.backends.cudnn.allow_tf32 = tf32
      torch.backends.cuda.matmul.allow_tf32 = tf32
    self.autocast_dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else None
    self.r_params = list(self.backbone.parameters()) + list(self.head.parameters())
    self.d_params = list(self.discriminator.parameters())
    self.r_opt = _optimizer(self.r_params, config.optim, self.device)
    self.d_opt = _optimizer(self.d_params, config.aprn.d_optim, self.device)
    (self.d_true, self.d_mean), (self.r_true, self.r_mean) = losses.routing(config.aprn.loss)
    self.alpha = float(config.aprn.alpha)
    self.d_period, self.adv_period = int(config.aprn.d_period), int(config.aprn.adv_period)
    self.step_count = 0
    self.compiled = bool(compile)
    # R (backbone) compiled; the head runs in float32 outside autocast, D stays eager.
    self._backbone = torch.compile(self.backbone) if compile else self.backbone

  def _autocast(self):
    if self.autocast_dtype is None:
      return contextlib.nullcontext()
    return torch.autocast(self.device.type, dtype=self.autocast_dtype)

  def make_batch(self, images_nhwc, labels, landmarks, mean_face):
    """Torch tensors on the device from numpy arrays of the JAX benchmark's shapes."""
    images = torch.as_tensor(images_nhwc).permute(0, 3, 1, 2)
    return {"image": images.to(self.device).contiguous(memory_format=self.memory_format),
            "label": torch.as_tensor(labels).long().to(self.device),
            "landmarks": torch.as_tensor(landmarks).float().to(self.device),
            "mean_face": torch.as_tensor(mean_face).float().to(self.device)}

  def _recognizer(self, batch):
    with self._autocast():
      embedding, tapped = self._backbone(batch["image"])
    logits, plain = self.head(embedding.float(), batch["label"])
    identity = F.cross_entropy(logits, batch["label"])
    accuracy = (plain.argmax(-1) == batch["label"]).float().mean()
    return identity, accuracy, tapped

  def _pose(self, features, batch):
    with self._autocast():
      y = self.discriminator(features)
    l1_true = (y - batch["landmarks"]).abs().mean()
    l1_mean = (y - batch["mean_face"]).abs().mean()
    return l1_true, l1_mean

  def baseline(self, batch):
    """R alone: identity loss, one backward, R's optimizer."""
    self.r_opt.zero_grad(set_to_none=True)
    identity, accuracy, _ = self._recognizer(batch)
    identity.backward(inputs=self.r_params)
    self.r_opt.step()
    self.step_count += 1
    return {"identity_loss": identity.detach(), "accuracy": accuracy}

  def aprn(self, batch, form=None):
    """Eq. 2: D fits its targets, R' fools D; D's parameters are held fixed for R's term.
    `form`: FORMS, default the step's own."""
    form = form or self.form
    if form not in FORMS:
      raise ValueError(f"form={form!r}: one of {FORMS}")
    d_on = self.step_count % self.d_period == 0
    adv_on = float(self.step_count % self.adv_period == 0)
    self.r_opt.zero_grad(set_to_none=True)
    self.d_opt.zero_grad(set_to_none=True)
    identity, accuracy, tapped = self._recognizer(batch)
    if form == "once":
      l1_true, l1_mean = self._pose(tapped, batch)
      if d_on:  # to D's parameters only; D's graph kept for R's pull-back
        d_loss = self.alpha * (self.d_true * l1_true + self.d_mean * l1_mean)
        d_loss.backward(inputs=self.d_params, retain_graph=True)
      r_l1_true, r_l1_mean = l1_true, l1_mean
    else:  # the public code's two forwards of D
      l1_true, l1_mean = self._pose(tapped.detach(), batch)
      if d_on:
        (self.alpha * (self.d_true * l1_true + self.d_mean * l1_mean)).backward(
            inputs=self.d_params)
      r_l1_true, r_l1_mean = self._pose(tapped, batch)
    r_loss = identity + self.alpha * adv_on * (self.r_true * r_l1_true
                                               + self.r_mean * r_l1_mean)
    # One backward of R with both cotangents; through D's input gradients only.
    r_loss.backward(inputs=self.r_params)
    self.r_opt.step()
    if d_on:
      self.d_opt.step()
    self.step_count += 1
    return {"identity_loss": identity.detach(), "accuracy": accuracy,
            "d_l1": l1_true.detach(), "adversarial_l1": l1_mean.detach()}

  def synchronize(self):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)

  def state(self):
    """Parameter copies of R and D (for tests)."""
    return ([p.detach().clone() for p in self.r_params],
            [p.detach().clone() for p in self.d_params])


def check_param_counts(counts, config, num_classes, num_landmarks):
  """Asserts the PyTorch reference's counts equal the JAX models' and the analytic ones."""
  expected = jax_param_counts(config, num_classes, num_landmarks)
  analytic = flop_count.param_counts(config, num_classes, num_landmarks)
  if counts != expected or analytic != expected:
    raise AssertionError(f"parameter counts differ: PyTorch {counts}, JAX {expected}, "
                         f"analytic {analytic}")
  return expected
