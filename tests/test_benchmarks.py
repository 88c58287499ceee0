"""The benchmark scripts run on a tiny config and print the fields others read.

No timing is checked: only that each script runs from the command line, prints one JSON
object (and appends the same line to --out), and that its FLOP and parameter counts agree
with counts made by hand from the tiny discriminator's layers.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from aprn_jax.models import onednn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Default config shrunk: 64x64 input, width 4, so stage4 (D's tap) is 2x2x128.
TINY = ["--config=configs/default.py", "--config.data.image_size=64", "--config.model.width=4",
        "--config.model.embedding_dim=16", "--num_classes=10", "--steps=1", "--warmup=0"]
TAP_SIZE, TAP_CHANNELS, POINTS, EMBEDDING, CLASSES = 2, 128, 51, 16, 10
BATCH, DEVICES = 32, 2


def valid_taps(size, kernel=3, pad=1):
  """Kernel positions that fall on the input, summed over the outputs of one axis."""
  return sum(1 for out in range(size) for k in range(kernel) if 0 <= out - pad + k < size)


# D on the tap: Conv3x3 128->128 (no bias) + BN, max-pool 2x2 -> 1x1, dense 128 -> 2M.
D_PARAMS = 3 * 3 * TAP_CHANNELS**2 + 2 * TAP_CHANNELS + TAP_CHANNELS * 2 * POINTS + 2 * POINTS
# Multiply-adds of D's conv (padding excluded, as XLA counts) and dense layer, per image.
D_FORWARD_MACS = valid_taps(TAP_SIZE)**2 * TAP_CHANNELS**2 + TAP_CHANNELS * 2 * POINTS


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Both scripts' JSON records, from one command-line run each (run side by side)."""
  folder = tmp_path_factory.mktemp("benchmarks")
  args = {"train_step": [f"--batch_size={BATCH}", f"--devices={DEVICES}"],
          "inference": ["--batch_size=4"]}
  procs = {name: subprocess.Popen(
      [sys.executable, f"benchmarks/{name}.py", *TINY, *extra, f"--out={folder / name}.jsonl"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, extra in args.items()}
  records = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    records[name] = json.loads(stdout.strip().splitlines()[-1])
    lines = (folder / f"{name}.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == records[name]
  return records


@pytest.mark.slow  # runs a benchmark script end to end
def test_train_step_reports_both_steps_and_d_runs_once(records):
  record = records["train_step"]
  assert (record["num_devices"], record["global_batch"], record["per_device_batch"]) == (
      DEVICES, BATCH, BATCH // DEVICES)
  for kind in ("baseline", "aprn"):
    entry = record[kind]
    for field in ("compile_s", "step_s", "images_per_s", "flops_per_step",
                  "xla_memory_mib_per_device", "peak_memory_mib", "mfu"):
      assert field in entry, (kind, field)
    assert entry["images_per_s"] == pytest.approx(BATCH / entry["step_s"])
  assert record["aprn"]["mfu"] is None  # CPU: no peak to compare with
  assert record["discriminator_params"] == D_PARAMS

  # XLA counts D's conv and dense FLOPs plus a little elementwise work (BN, ReLU, pool, L1).
  d_forward = record["discriminator"]["forward_flops"]
  assert 2 * BATCH * D_FORWARD_MACS <= d_forward <= 1.1 * 2 * BATCH * D_FORWARD_MACS
  base, aprn = record["baseline"]["flops_per_step"], record["aprn"]["flops_per_step"]
  assert record["aprn_extra_flops"] == aprn - base
  assert record["flops_ratio"] == pytest.approx(aprn / base)
  # The APRN step adds D's own update (forward, backward to its parameters and to the tap,
  # optimizer) and little else: the pmean and d_period select of D's parameters, a second
  # pull-back through D's dense layer. A second forward of D would add about 0.3 more.
  assert 1.0 <= record["extra_over_d_update"] < 1.2
  assert 2.5 < record["extra_over_d_forward"] < 3.6
  assert record["aprn_over_baseline_time"] == pytest.approx(
      record["aprn"]["step_s"] / record["baseline"]["step_s"])
  for field in ("time_ratio_over_flops_ratio", "aprn_over_baseline_plus_d_time"):
    assert record[field] > 0


@pytest.mark.slow  # runs a benchmark script end to end
def test_inference_exports_match_and_drop_head_and_discriminator(records):
  record = records["inference"]
  aprn, base = record["aprn"], record["baseline"]
  assert record["identical"] and record["exports_are_backbone_alone"]
  assert aprn["exported_params"] == base["exported_params"]
  assert aprn["flops_per_image"] == base["flops_per_image"] > 0
  assert base["trained_params"] - base["exported_params"] == EMBEDDING * CLASSES + CLASSES
  assert aprn["trained_params"] - base["trained_params"] == D_PARAMS
  for field in ("compile_s", "call_s", "images_per_s", "mfu"):
    assert field in aprn and field in base


def test_train_step_rejects_a_batch_the_devices_cannot_split():
  proc = subprocess.run([sys.executable, "benchmarks/train_step.py", *TINY, "--batch_size=3",
                         "--devices=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "--batch_size=3 is not a positive multiple of the 2 devices" in proc.stderr


@pytest.mark.slow
def test_input_pipeline_reports_both_pipelines_next_to_the_step(tmp_path):
  proc = subprocess.run(
      [sys.executable, "benchmarks/input_pipeline.py", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'wd'}", "--batches=2", "--jpeg_images=48", "--steps=1",
       f"--out={tmp_path / 'out.jsonl'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record["jpeg_folder"]["num_examples"] == 48
  assert record["synthetic"]["num_examples"] == 40 * 8  # the tiny build's training split
  for name in ("synthetic", "jpeg_folder"):
    assert record[name]["images_per_s"] > 0
    assert record[f"{name}_over_aprn_step"] == pytest.approx(
        record[name]["images_per_s"] / record["train_step"]["aprn"]["images_per_s"])
  assert (tmp_path / "out.jsonl").read_text().strip() == proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow  # runs a benchmark script end to end
def test_layers_compares_the_cpu_forms_with_flax(tmp_path):
  proc = subprocess.run([sys.executable, "benchmarks/layers.py", "--steps=1", "--scale=32",
                         f"--out={tmp_path / 'out.jsonl'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (tmp_path / "out.jsonl").read_text().strip() == proc.stdout.strip().splitlines()[-1]
  cases = {case["name"]: case for case in record["cases"]}
  assert len(cases) == 10
  for name, case in cases.items():
    assert set(case["speedup"]) == ({"xla", "fast"} if "fast" in case else {"xla"})
    for form, speedup in case["speedup"].items():
      assert speedup == pytest.approx(case["flax"]["step_s"] / case[form]["step_s"])
    if "pool" not in name:
      # No padding tap is multiplied: the same FLOPs but for the gradient's adds of the
      # kernel slices (a few % at these small batches), and the same count where the forms
      # are the same.
      flops, flax_flops = case["xla"]["flops"], case["flax"]["flops"]
      assert 0.95 * flax_flops <= flops <= 1.1 * flax_flops, name
      if "same form" in name or "stem (" in name:
        assert flops == flax_flops, name


@pytest.mark.slow  # compiles the step once per variant
def test_xla_options_times_each_variant_against_the_defaults(tmp_path):
  options = '{"no_ynnpack": {"xla_cpu_experimental_ynn_fusion_type": ""}}'
  proc = subprocess.run([sys.executable, "benchmarks/xla_options.py", *TINY, "--batch_size=8",
                         "--variants=none", f"--options={options}", "--steps=2",
                         f"--out={tmp_path / 'out.jsonl'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  variants = record["variants"]
  assert set(variants) == {"default", "no_ynnpack"}
  assert variants["default"]["speedup"] == 1.0
  assert variants["no_ynnpack"]["speedup"] == pytest.approx(
      variants["default"]["median_s"] / variants["no_ynnpack"]["median_s"])
  assert variants["no_ynnpack"]["images_per_s"] == pytest.approx(
      8 / variants["no_ynnpack"]["median_s"])


def test_xla_options_reach_the_compiler_and_bad_ones_are_named():
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, ROOT)
  from benchmarks import xla_options
  lowered = jax.jit(lambda x: jnp.tanh(x @ x).sum()).lower(jnp.ones((64, 64)))
  default, _ = xla_options._compile(lowered, {}, "default")
  without, _ = xla_options._compile(lowered, xla_options.VARIANT_SETS["cpu"]["no_ynnpack"],
                                    "no_ynnpack")
  if jax.default_backend() == "cpu":  # XLA:CPU sends this dot to YNNPACK by default
    assert "__ynn_fusion" in default.as_text()
    assert "__ynn_fusion" not in without.as_text()
  with pytest.raises(ValueError, match="variant 'typo'.*XLA refused it"):
    xla_options._compile(lowered, {"xla_cpu_no_such_option": True}, "typo")
  with pytest.raises(ValueError, match="'default' is XLA's defaults"):
    xla_options.parse_options('{"default": {}}')
  with pytest.raises(ValueError, match="not JSON"):
    xla_options.parse_options("{no_ynnpack}")


@pytest.mark.slow  # profiles a compiled step
def test_op_profile_splits_the_step_into_xla_operations(tmp_path):
  proc = subprocess.run([sys.executable, "benchmarks/op_profile.py", *TINY, "--batch_size=8",
                         "--top=5", f"--out={tmp_path / 'out.jsonl'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (tmp_path / "out.jsonl").read_text().strip() == proc.stdout.strip().splitlines()[-1]
  kinds, top = record["kinds"], record["top"]
  assert sum(k["ms_per_step"] for k in kinds) == pytest.approx(record["ops_ms_per_step"])
  assert sum(k["share"] for k in kinds) == pytest.approx(1.0)
  assert len(top) == 5 and top[0]["ms_per_step"] >= top[-1]["ms_per_step"] > 0
  # The operations are XLA's, with the shapes the compiled program gives them; Python frames
  # and the runtime's own spans are not among them.
  assert all(re.fullmatch(r"\(?[a-z]+\d*\[[\d,]*\].*", op["shape"]) for op in top), top
  assert not any(k["kind"].startswith(("$", "ThunkExecutor", "shard_args")) for k in kinds)


@pytest.mark.slow  # compiles the step twice
@pytest.mark.parametrize("change", ["bn_gradient", "onednn_split"])
def test_step_ab_times_a_change_on_and_off(change, tmp_path):
  if change == "onednn_split" and not onednn.available():
    pytest.skip(f"oneDNN unavailable: {onednn.unavailable_reason()}")
  proc = subprocess.run([sys.executable, "benchmarks/step_ab.py", *TINY, "--batch_size=16",
                         f"--change={change}", "--kinds=baseline", "--rounds=2", "--steps=2",
                         "--warmup=1", f"--out={tmp_path / 'out.jsonl'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record["change"] == change and "aprn" not in record
  entry = record["baseline"]
  assert len(entry["off_step_s_by_round"]) == len(entry["on_step_s_by_round"]) == 2
  ratios = [b / a for a, b in zip(entry["off_step_s_by_round"], entry["on_step_s_by_round"])]
  assert entry["ratio"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2)
