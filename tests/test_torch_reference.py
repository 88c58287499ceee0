"""The PyTorch reference step (benchmarks/torch_reference.py) and the side-by-side benchmark
(benchmarks/compare_torch.py): the same parameter counts as the JAX models, an analytic FLOP
count that agrees with XLA's, and a step that trains. Skipped without PyTorch (an optional
extra: requirements-bench.txt)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import compare_torch, flop_count, torch_reference  # noqa: E402
from configs import default, resnet101  # noqa: E402

NUM_CLASSES, POINTS = 1000, 51


def test_resnet101_counts_equal_the_public_code_and_the_jax_model():
  config = resnet101.get_config()
  backbone = torch_reference.ResNet(config.model, 224, "stage4")
  disc = torch_reference.Discriminator(config, 224, POINTS)
  head = torch_reference.make_head(config.model, NUM_CLASSES)
  counts = {"backbone": torch_reference.param_count(backbone),
            "head": torch_reference.param_count(head),
            "discriminator": torch_reference.param_count(disc)}
  assert counts["backbone"] == 68_182_848 and counts["discriminator"] == 41_095_270
  assert torch_reference.check_param_counts(counts, config, NUM_CLASSES, POINTS) == counts


def test_default_config_counts_equal_the_jax_model():
  config = default.get_config()   # the CPU-sized ResNet, D 128 wide on stage4
  step = torch_reference.ReferenceStep(config, num_classes=NUM_CLASSES, num_landmarks=POINTS,
                                       check_counts=False)
  assert step.counts == torch_reference.jax_param_counts(config, NUM_CLASSES, POINTS)
  assert step.counts == flop_count.param_counts(config, NUM_CLASSES, POINTS)


def _torch_forward_macs(module, *inputs):
  """Multiply-adds per image of the Conv2d and Linear layers `module` runs, from their real
  input shapes, padding and strides (kernel taps on padding left out)."""
  macs = []

  def hook(layer, args, _):
    x = args[0]
    if isinstance(layer, torch.nn.Conv2d):
      taps = [flop_count.valid_taps(x.shape[2 + a], layer.kernel_size[a], layer.stride[a],
                                    (layer.padding[a], layer.padding[a])) for a in (0, 1)]
      macs.append(taps[0] * taps[1] * layer.in_channels * layer.out_channels)
    else:
      macs.append(layer.in_features * layer.out_features)

  handles = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  with torch.no_grad():
    out = module(*inputs)
  for h in handles:
    h.remove()
  return sum(macs), out


@pytest.mark.parametrize("image_size,tap", [(64, "stage4"), (112, "stage4"), (64, "stem")])
def test_analytic_layers_are_the_torch_layers(image_size, tap):
  """flop_count walks the JAX model's layers (SAME padding); the PyTorch model pads its
  stride-2 3x3 convolutions symmetrically: the same taps land on the input. On the stem, D
  is Table 1's four strided convolutions."""
  config = default.get_config()
  config.data.image_size = image_size
  config.aprn.update(tap=tap, d_widths=() if tap == "stem" else config.aprn.d_widths)
  parts = flop_count.model_layers(config, NUM_CLASSES, POINTS)
  analytic = {part: sum(layer.macs for layer in layers) for part, layers in parts.items()}
  backbone = torch_reference.ResNet(config.model, image_size, tap).eval()
  disc = torch_reference.Discriminator(config, image_size, POINTS).eval()
  images = torch.zeros(1, 3, image_size, image_size)
  macs, (_, tapped) = _torch_forward_macs(backbone, images)
  assert macs == analytic["backbone"]
  assert _torch_forward_macs(disc, tapped)[0] == analytic["discriminator"]


@pytest.fixture(scope="module")
def record():
  """compare_torch's record for the default config at batch 4, one round of one step."""
  return compare_torch.measure(default.get_config(), batch_size=4, rounds=1, steps=1,
                               warmup=0, num_classes=NUM_CLASSES, num_landmarks=POINTS,
                               torch_form="both")


def test_analytic_count_matches_xla_cpu_count(record):
  xla = record["flops"]["xla"]
  assert xla["baseline"]["compiled"] > 0
  # Convolutions, dense layers, optimizer and the elementwise tally against XLA's count.
  assert abs(xla["baseline"]["analytic_total_over_xla"] - 1) < 0.05
  # The APRN step: XLA also counts the d_period select and the gradient mean over D's
  # parameters, which the framework-neutral count leaves out (a few % at batch 4).
  assert abs(xla["aprn"]["analytic_total_over_xla"] - 1) < 0.08
  flops = record["flops"]
  assert flops["baseline"]["matmul"] < flops["aprn"]["matmul"] < (
      flops["aprn_two_forward"]["matmul"])


def test_compare_reports_both_frameworks(record):
  assert record["params"] == torch_reference.jax_param_counts(default.get_config(),
                                                              NUM_CLASSES, POINTS)
  assert record["torch"]["param_counts_equal_jax"] and record["torch"]["finite_losses"]
  for framework in ("jax", "torch"):
    for kind in ("baseline", "aprn"):
      entry = record[framework][kind]
      assert entry["images_per_s"] == pytest.approx(4 / entry["step_s"])
      assert entry["model_flops_per_step"] == record["flops"][kind]["matmul"]
      assert entry["mfu"] is None   # CPU: no peak
  assert record["torch"]["aprn"]["form"] in ("once", "two_forward")
  assert set(record["jax_over_torch"]) == {"baseline", "aprn", "aprn_once",
                                           "aprn_two_forward"}
  assert record["torch"]["aprn_two_forward"]["executed_flops_per_step"] == (
      record["flops"]["aprn_two_forward"]["matmul"])


def _batch(step, batch_size=2, size=64):
  rng = np.random.RandomState(0)
  return step.make_batch(rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
                         rng.randint(0, NUM_CLASSES, batch_size),
                         rng.uniform(-0.8, 0.8, (batch_size, POINTS, 2)),
                         rng.uniform(-0.5, 0.5, (POINTS, 2)))


def test_one_aprn_step_trains_r_and_d_and_both_forms_agree():
  config = default.get_config()
  steps = {form: torch_reference.ReferenceStep(config, num_classes=NUM_CLASSES,
                                               num_landmarks=POINTS, form=form,
                                               check_counts=False)
           for form in torch_reference.FORMS}
  after = {}
  for form, step in steps.items():
    r_before, d_before = step.state()
    metrics = step.aprn(_batch(step))
    assert all(torch.isfinite(v) for v in metrics.values()), metrics
    r_after, d_after = step.state()
    assert any(not torch.equal(a, b) for a, b in zip(r_before, r_after))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, d_after))
    after[form] = r_after + d_after
  # D on the detached tap and again on the tap (the public code's form) computes the same
  # update as one forward with D held fixed in R's pull-back.
  for a, b in zip(after["once"], after["two_forward"]):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_baseline_step_leaves_d_alone():
  step = torch_reference.ReferenceStep(default.get_config(), num_classes=NUM_CLASSES,
                                       num_landmarks=POINTS, check_counts=False)
  _, d_before = step.state()
  metrics = step.baseline(_batch(step))
  assert torch.isfinite(metrics["identity_loss"])
  assert all(torch.equal(a, b) for a, b in zip(d_before, step.state()[1]))
