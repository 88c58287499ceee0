"""layers.Conv and layers.max_pool in each CPU form against flax's; prints one JSON object.

    python benchmarks/layers.py [--steps=7] [--scale=1] [--out=results.jsonl]

For layer shapes of the configs (where the `xla` forms differ from flax's, and one where both
are `lax.conv_general_dilated`): seconds of forward + backward (to the input and the kernel;
to the input for the pool), median of --steps calls after one warm-up, in the forms
(`layers.FORMS`) `fast` (with oneDNN; left out where it is unavailable, since it is then
`xla`), `xla` and `flax`, the calls alternating; XLA's FLOP count of each (oneDNN's FFI calls
count nothing);
and each form's speed-up over flax's. --scale divides every batch (a quick run; the tests
use it).
"""
import os
import sys

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aprn_jax.models import layers
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 7, "Timed calls of each form.")
flags.DEFINE_integer("scale", 1, "Divide every batch by this.")
flags.DEFINE_string("out", None, "Also append the JSON line to this file.")

# (name, batch, map size, input channels, features, kernel, stride, padding)
CONVS = [
    ("default stem (7x7/2, 3 -> 16)", 128, 64, 3, 16, 7, 2, ((3, 3), (3, 3))),
    ("default stage1 conv2 (3x3, 16, same form)", 128, 16, 16, 16, 3, 1, "SAME"),
    ("default stage1 conv3 (1x1)", 128, 16, 16, 64, 1, 1, "SAME"),
    ("default stage2 conv1 (1x1)", 128, 16, 64, 32, 1, 1, "SAME"),
    ("default stage4 conv2 (3x3/2, 4 -> 2)", 128, 4, 128, 128, 3, 2, "SAME"),
    ("default D conv (3x3 on 2x2, width 128)", 128, 2, 512, 128, 3, 1, ((1, 1), (1, 1))),
    ("ResNet-101 224 D conv (3x3 2048 on 7x7)", 4, 7, 2048, 2048, 3, 1, ((1, 1), (1, 1))),
    ("ResNet-101 224 stage3 conv2 (3x3, same form)", 4, 14, 256, 256, 3, 1, "SAME"),
]
# (name, batch, map size, channels, window, stride, padding)
POOLS = [
    ("ResNet stem pool (64x64 input)", 128, 32, 16, 3, 2, ((1, 1), (1, 1))),
    ("CASIA-Net pool1 (96x96 input)", 128, 96, 64, 2, 2, "VALID"),
]


def conv_case(forms, batch, size, channels, features, kernel, stride, padding):
  conv = layers.Conv(features, (kernel, kernel), (stride, stride), padding, forms=forms)
  x = jnp.asarray(np.random.RandomState(0).randn(batch, size, size, channels), jnp.float32)
  variables = conv.init(jax.random.key(0), x)
  loss = lambda v, x: jnp.sum(conv.apply(v, x) ** 2)
  return jax.grad(loss, (0, 1)), (variables, x)


def pool_case(forms, batch, size, channels, window, stride, padding):
  x = jnp.asarray(np.random.RandomState(0).randn(batch, size, size, channels), jnp.float32)
  loss = lambda x: jnp.sum(layers.max_pool(x, (window, window), (stride, stride), padding,
                                           forms) ** 2)
  return jax.grad(loss), (x,)


def measure(make, shape, steps):
  """{form: {compile, FLOPs, seconds}} for the CPU forms and flax's, timed alternately."""
  calls, record = {}, {}
  forms = {"fast": "fast", "xla": "xla", "flax": "flax"}
  if layers.cpu_forms("fast") != "onednn":  # then fast is xla
    del forms["fast"]
  for form, layer_forms in forms.items():
    fn, args = make(layer_forms, *shape)
    lowered, compiled, compile_s = common.compile_timed(jax.jit(fn), *args)
    jax.block_until_ready(compiled(*args))
    calls[form] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
    record[form] = dict(compile_s=compile_s, flops=common.flops(lowered, compiled))
  for form, times in common.time_interleaved(calls, steps).items():
    record[form].update(step_s=times["median_s"], step_s_min=times["min_s"])
  record["speedup"] = {form: record["flax"]["step_s"] / record[form]["step_s"]
                       for form in forms if form != "flax"}
  return record


def main(argv):
  del argv
  if FLAGS.steps < 1 or FLAGS.scale < 1:
    raise ValueError(f"--steps={FLAGS.steps} and --scale={FLAGS.scale} must be at least 1")
  record = dict(benchmark="layers", **common.machine(jax.local_devices()[:1]),
                steps=FLAGS.steps, scale=FLAGS.scale, cases=[])
  cases = [(name, conv_case, shape) for name, *shape in CONVS]
  cases += [(name, pool_case, shape) for name, *shape in POOLS]
  for name, make, (batch, *shape) in cases:
    batch = max(1, batch // FLAGS.scale)
    record["cases"].append(dict(name=name, batch=batch,
                                **measure(make, (batch, *shape), FLAGS.steps)))
  common.emit(record, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
