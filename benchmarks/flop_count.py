"""An analytic FLOP count of the baseline and APRN train steps, from the layer shapes alone.

The count walks the architecture of the config (the pre-activation ResNet of
aprn_jax/models/resnet.py, Table 1's D of aprn_jax/models/discriminator.py, the head of
aprn_jax/models/heads.py) with plain integers: no framework is imported, so the same figure
serves both the JAX step and the PyTorch reference (benchmarks/torch_reference.py), on CPU and
GPU alike, where XLA's own cost analysis does not count cuDNN's convolutions
(docs/benchmarks.md, "On a GPU").

What is counted, per image unless said (a multiply-add is 2 FLOPs):

- Convolutions: 2 x (kernel taps that land on the input, not on padding, summed over the
  output pixels) x input channels x output channels. Padding taps are left out, as XLA's cost
  analysis leaves them out (docs/benchmarks.md, "How the figures are made"); `dense_conv_flops`
  in `step_flops` says what counting them too would add.
- Dense layers (the embedding, the identity head, D's output layer): 2 x inputs x outputs, plus
  one FLOP per output for the bias where the layer has one.
- Backward: a layer's weight gradient costs its forward matmul FLOPs again, its input gradient
  the same again, so a layer that needs both costs 2x its forward. The stem convolution needs
  no input gradient (its input is the image): 1x. The APRN step pulls D's output back twice
  (aprn_jax/train_step.py): once to D's parameters with the gradient of D's term (weight
  gradients of every layer of D, input gradients of all but its first), once to the tapped map
  with the gradient of R's term (input gradients of every layer of D, no weight gradients);
  its result then joins the identity gradient in R's one backward pass, which costs what the
  baseline's costs. The two-forward form (the public code's) adds a second forward of D.
- Optimizer: SGD with momentum and weight decay added to the gradient (optax's
  add_decayed_weights + sgd, torch.optim.SGD): 6 FLOPs per parameter and update (decay
  multiply-add, momentum multiply-add, learning-rate scale, parameter add).
- Elementwise work (`elementwise_flops`, counted separately and added to `total` only):
  BatchNorm in training 8 FLOPs per element forward and 10 backward, ReLU 1 and 1, the residual
  add 1 and 1, max-pool 1 per window tap forward and backward, a nominal tally (no framework
  does exactly this, both do about this). Loss, softmax and the margin's trigonometry are not
  counted: they act on batch x classes values, small next to the layers at every config here.

`matmul` (convolutions + dense + optimizer) is the model's FLOPs of the kind MFU is usually
quoted for; `total` adds the elementwise tally and is what tests/test_torch_reference.py
compares with XLA's CPU count of the JAX baseline step.
"""
import dataclasses
from typing import Tuple

RESNET_STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
RESNET_TAPS = ("stem", "stage1", "stage2", "stage3", "stage4")
OPTIMIZER_FLOPS_PER_PARAM = 6
BN_FORWARD, BN_BACKWARD = 8, 10     # FLOPs per element of a training BatchNorm


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer of the walk. Shapes are per image: (height, width, channels) or (features,)."""
  name: str
  kind: str                    # conv | dense | bn | relu | add | max_pool
  part: str                    # backbone | head | discriminator
  in_shape: Tuple[int, ...]
  out_shape: Tuple[int, ...]
  macs: int = 0                # multiply-adds per image (padding taps excluded)
  dense_macs: int = 0          # the same with padding taps (what a padded kernel multiplies)
  bias: int = 0                # bias adds per image
  params: int = 0
  input_grad: bool = True      # False: the layer's input needs no gradient (the image)
  window: int = 0              # max-pool: taps per window

  @property
  def elements(self):
    size = 1
    for d in self.out_shape:
      size *= d
    return size


def same_pads(size, kernel, stride):
  """(lo, hi) of XLA's SAME padding on one axis (lax.padtype_to_pads)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv_out(size, kernel, stride, pads):
  return (size + pads[0] + pads[1] - kernel) // stride + 1


def valid_taps(size, kernel, stride, pads):
  """Kernel taps that land on the input, summed over the outputs of one axis."""
  out = conv_out(size, kernel, stride, pads)
  return sum(1 for o in range(out) for k in range(kernel)
             if 0 <= o * stride - pads[0] + k < size)


def conv_layer(name, part, in_shape, features, kernel, stride, pads, input_grad=True):
  height, width, channels = in_shape
  (ph, pw) = pads
  out_shape = (conv_out(height, kernel, stride, ph), conv_out(width, kernel, stride, pw),
               features)
  taps = valid_taps(height, kernel, stride, ph) * valid_taps(width, kernel, stride, pw)
  dense = out_shape[0] * out_shape[1] * kernel * kernel
  return Layer(name, "conv", part, in_shape, out_shape, macs=taps * channels * features,
               dense_macs=dense * channels * features,
               params=kernel * kernel * channels * features, input_grad=input_grad)


def dense_layer(name, part, features_in, features_out, bias=True):
  macs = features_in * features_out
  return Layer(name, "dense", part, (features_in,), (features_out,), macs=macs,
               dense_macs=macs, bias=features_out if bias else 0,
               params=macs + (features_out if bias else 0))


def bn_relu(name, part, shape):
  return [Layer(f"{name}/bn", "bn", part, shape, shape, params=2 * shape[-1]),
          Layer(f"{name}/relu", "relu", part, shape, shape)]


def max_pool_layer(name, part, shape, window=3, stride=2, pad=1):
  out = (conv_out(shape[0], window, stride, (pad, pad)),
         conv_out(shape[1], window, stride, (pad, pad)), shape[2])
  return Layer(name, "max_pool", part, shape, out, window=window * window)


def resnet_layers(model_cfg, image_size):
  """(layers, {tap: shape}) of the backbone (aprn_jax/models/resnet.py), per image."""
  if model_cfg.backbone != "resnet":
    raise NotImplementedError(f"the analytic count covers the ResNet backbone; "
                              f"config.model.backbone={model_cfg.backbone!r}")
  stage_sizes = tuple(model_cfg.stage_sizes) or RESNET_STAGE_SIZES[model_cfg.depth]
  part, width = "backbone", model_cfg.width
  stem = conv_layer("stem_conv", part, (image_size, image_size, 3), width, 7, 2,
                    ((3, 3), (3, 3)), input_grad=False)
  out = [stem] + bn_relu("stem", part, stem.out_shape)
  out.append(max_pool_layer("stem_pool", part, stem.out_shape))
  shape, taps = out[-1].out_shape, {"stem": out[-1].out_shape}
  for i, num_blocks in enumerate(stage_sizes):
    w = width * 2**i
    for j in range(num_blocks):
      name, stride = f"stage{i + 1}_block{j + 1}", 2 if (i > 0 and j == 0) else 1
      if j == 0:   # the activated stage input feeds the block and its projection shortcut
        out.append(conv_layer(f"{name}/shortcut", part, shape, 4 * w, 1, stride,
                              ((0, 0), (0, 0))))
      else:
        out += bn_relu(f"{name}/in", part, shape)
      conv1 = conv_layer(f"{name}/conv1", part, shape, w, 1, 1, ((0, 0), (0, 0)))
      pads = (same_pads(shape[0], 3, stride), same_pads(shape[1], 3, stride))
      conv2 = conv_layer(f"{name}/conv2", part, conv1.out_shape, w, 3, stride, pads)
      conv3 = conv_layer(f"{name}/conv3", part, conv2.out_shape, 4 * w, 1, 1, ((0, 0), (0, 0)))
      out += ([conv1] + bn_relu(f"{name}/1", part, conv1.out_shape) + [conv2]
              + bn_relu(f"{name}/2", part, conv2.out_shape) + [conv3])
      out.append(Layer(f"{name}/add", "add", part, conv3.out_shape, conv3.out_shape))
      shape = conv3.out_shape
    out += bn_relu(f"stage{i + 1}", part, shape)
    taps[f"stage{i + 1}"] = shape
  flat = shape[0] * shape[1] * shape[2]
  out.append(dense_layer("embedding", part, flat, model_cfg.embedding_dim))
  return out, taps


def head_layers(model_cfg, num_classes):
  """The identity head (aprn_jax/models/heads.py): softmax has a bias, margin heads none."""
  if model_cfg.get("classifier", "dense") != "dense":
    raise NotImplementedError("the analytic count covers the dense head only")
  return [dense_layer("head", "head", model_cfg.embedding_dim, num_classes,
                      bias=model_cfg.head == "softmax")]


def discriminator_widths(config, taps):
  """D's widths as aprn_jax/models/__init__.py sets them (Table 1 scaled to the last map)."""
  if tuple(config.aprn.d_widths):
    return tuple(config.aprn.d_widths)
  depth = {"stem": 4, "stage1": 3, "stage2": 2, "stage3": 1, "stage4": 1}[config.aprn.tap]
  last = taps["stage4"][-1]
  return tuple(last // 2**k for k in reversed(range(depth)))


def discriminator_layers(config, taps, num_landmarks):
  """D (aprn_jax/models/discriminator.py) on config.aprn.tap, per image."""
  if config.aprn.tap not in RESNET_TAPS:
    raise ValueError(f"config.aprn.tap={config.aprn.tap!r} is not a ResNet tap")
  shape, target, part = taps[config.aprn.tap], taps["stage4"][0], "discriminator"
  out = []
  for i, width in enumerate(discriminator_widths(config, taps)):
    stride = 2 if shape[0] > target else 1
    conv = conv_layer(f"d_conv{i + 1}", part, shape, width, 3, stride, ((1, 1), (1, 1)))
    out += [conv] + bn_relu(f"d_{i + 1}", part, conv.out_shape)
    shape = conv.out_shape
  if config.aprn.d_pool in ("table", "max"):   # the ResNet table has the pool
    out.append(max_pool_layer("d_pool", part, shape))
    shape = out[-1].out_shape
  out.append(dense_layer("d_landmarks", part, shape[0] * shape[1] * shape[2],
                         2 * num_landmarks))
  return out


def model_layers(config, num_classes, num_landmarks):
  """{'backbone', 'head', 'discriminator'}: each part's layers."""
  backbone, taps = resnet_layers(config.model, config.data.image_size)
  return {"backbone": backbone, "head": head_layers(config.model, num_classes),
          "discriminator": discriminator_layers(config, taps, num_landmarks)}


def param_counts(config, num_classes, num_landmarks):
  return {part: sum(layer.params for layer in layers)
          for part, layers in model_layers(config, num_classes, num_landmarks).items()}


def _matmul_forward(layer, dense=False):
  return 2 * (layer.dense_macs if dense else layer.macs) + layer.bias


def _elementwise(layer):
  """(forward, backward) elementwise FLOPs per image of a non-matmul layer."""
  if layer.kind == "bn":
    return BN_FORWARD * layer.elements, BN_BACKWARD * layer.elements
  if layer.kind in ("relu", "add"):
    return layer.elements, layer.elements
  if layer.kind == "max_pool":
    return layer.window * layer.elements, layer.window * layer.elements
  return 0, 0


def _part_flops(layers, dense=False):
  """Per image: matmul forward, weight-gradient and input-gradient FLOPs of `layers`, and
  the elementwise forward and backward tallies."""
  fwd = w_grad = in_grad = 0
  first_in_grad = None
  ew_fwd = ew_bwd = 0
  for layer in layers:
    if layer.kind in ("conv", "dense"):
      f = _matmul_forward(layer, dense)
      fwd += f
      w_grad += 2 * (layer.dense_macs if dense else layer.macs)
      if layer.input_grad:
        g = 2 * (layer.dense_macs if dense else layer.macs)
        in_grad += g
        if first_in_grad is None:
          first_in_grad = g
    else:
      e_f, e_b = _elementwise(layer)
      ew_fwd, ew_bwd = ew_fwd + e_f, ew_bwd + e_b
  return dict(forward=fwd, weight_grad=w_grad, input_grad=in_grad,
              first_input_grad=first_in_grad or 0, elementwise_forward=ew_fwd,
              elementwise_backward=ew_bwd)


def step_flops(config, batch_size, num_classes, num_landmarks, kind="baseline",
               d_forwards=1):
  """FLOPs of one train step of `kind` ('baseline' or 'aprn') on `batch_size` images.

  d_forwards=2: the APRN step's two-forward form (D's forward on the detached tap for D's
  update, again on the tap for R's term). Returns a dict: `matmul` (convolutions + dense +
  optimizer), `elementwise`, `total` (their sum), the per-part breakdown and
  `dense_conv_flops` (`matmul` if padding taps were multiplied too).
  """
  if kind not in ("baseline", "aprn"):
    raise ValueError(f"kind={kind!r}: 'baseline' or 'aprn'")
  if d_forwards not in (1, 2):
    raise ValueError(f"d_forwards={d_forwards}: 1 or 2")
  parts = model_layers(config, num_classes, num_landmarks)
  params = {part: sum(layer.params for layer in layers) for part, layers in parts.items()}

  def tally(dense):
    r = [_part_flops(parts["backbone"], dense), _part_flops(parts["head"], dense)]
    matmul = sum(p["forward"] + p["weight_grad"] + p["input_grad"] for p in r) * batch_size
    elementwise = sum(p["elementwise_forward"] + p["elementwise_backward"] for p in r)
    optimizer = OPTIMIZER_FLOPS_PER_PARAM * (params["backbone"] + params["head"])
    breakdown = {"recognizer_matmul": matmul}
    if kind == "aprn":
      d = _part_flops(parts["discriminator"], dense)
      # to D's parameters: all weight gradients, input gradients of all but D's first layer;
      # to the tap: all input gradients; forward once or twice
      d_matmul = (d_forwards * d["forward"] + d["weight_grad"]
                  + 2 * d["input_grad"] - d["first_input_grad"]) * batch_size
      # D's elementwise backward runs in both pull-backs
      elementwise += d_forwards * d["elementwise_forward"] + 2 * d["elementwise_backward"]
      optimizer += OPTIMIZER_FLOPS_PER_PARAM * params["discriminator"]
      matmul += d_matmul
      breakdown["discriminator_matmul"] = d_matmul
    breakdown["optimizer"] = optimizer
    return matmul + optimizer, elementwise * batch_size, breakdown

  matmul, elementwise, breakdown = tally(dense=False)
  return dict(matmul=matmul, elementwise=elementwise, total=matmul + elementwise,
              dense_conv_flops=tally(dense=True)[0], breakdown=breakdown,
              batch_size=batch_size, kind=kind, d_forwards=d_forwards if kind == "aprn" else 0)


DEFINITION = (
    "analytic count from the layer shapes (benchmarks/flop_count.py): convolutions and dense "
    "layers 2 FLOPs per multiply-add, padding taps excluded; backward 2x forward (weight and "
    "input gradients), 1x for the stem convolution (no input gradient); D pulled back twice "
    "in the APRN step (to its parameters, to the tap); optimizer 6 FLOPs per parameter. "
    "`matmul` is that sum; `total` adds a nominal elementwise tally (BatchNorm 8+10, ReLU "
    "1+1, residual add 1+1, max-pool 1 per window tap each way, per element)")
