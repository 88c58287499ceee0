"""Independent random streams: no two (seed, phase) of seeds 0..9 share a PRNG key, a data
order or an augmentation stream."""
import itertools

import jax
import numpy as np
import pytest
import tensorflow as tf

from aprn_jax import seeds, trainer
from input_pipeline import preprocess

SEEDS = range(10)


def test_no_two_streams_share_a_key():
  keys = {}
  for seed, phase, purpose in itertools.product(SEEDS, trainer.PHASES, seeds.PURPOSE_IDS):
    data = tuple(np.asarray(jax.random.key_data(seeds.key(seed, phase, purpose))).tolist())
    assert data not in keys, f"{(seed, phase, purpose)} shares a key with {keys[data]}"
    keys[data] = (seed, phase, purpose)


def test_no_two_phases_or_seeds_share_a_data_order():
  """Every epoch's shuffle seed and augmentation seed, over seeds x phases x 30 epochs."""
  seen = {}
  for seed, phase in itertools.product(SEEDS, trainer.PHASES):
    for epoch in range(30):
      for stream in preprocess._epoch_seeds(seeds.data_seed(seed, phase), epoch):
        assert stream not in seen, f"{(seed, phase, epoch)} reuses the stream of {seen[stream]}"
        seen[stream] = (seed, phase, epoch)


def _first_batch_labels(seed_words):
  labels = np.arange(64)
  examples = dict(image=np.zeros((64, 8, 8, 3), np.uint8), label=labels,
                  landmarks=np.full((64, 51, 2), 4.0, np.float32))
  batches = preprocess.train_batches(lambda: tf.data.Dataset.from_tensor_slices(examples),
                                     num_examples=64, global_batch_size=16, crop_size=8,
                                     seed=seed_words, process_index=0, process_count=1,
                                     local_device_count=1)
  return tuple(next(batches)["label"].ravel().tolist())


def test_phases_and_seeds_draw_different_batches():
  orders = {(seed, phase): _first_batch_labels(seeds.data_seed(seed, phase))
            for seed in range(4) for phase in trainer.PHASES}
  assert len(set(orders.values())) == len(orders)
  # The additive scheme this replaced: seed s's APRN order was seed s + 1000's baseline order.
  assert orders[(0, "aprn")] != orders[(1, "baseline")]


def test_bad_seed_is_named():
  with pytest.raises(ValueError, match=r"config\.seed=-1"):
    seeds.key(-1, "baseline", "init")
  with pytest.raises(ValueError, match="seed must be an int"):
    _first_batch_labels((0, -2))
