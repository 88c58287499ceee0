"""Orbax checkpoints: exact round trip, recognizer-only restore, other device counts."""
import functools
import os

import jax
import numpy as np
import optax
import pytest

from aprn_jax import checkpoints, train_step
import tiny_setup


@functools.lru_cache(maxsize=None)
def pmapped(devices):
  cfg = tiny_setup.config()
  recognizer, disc = tiny_setup.build(cfg)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  step = jax.pmap(functools.partial(train_step.train_step, recognizer=recognizer,
                                    discriminator=disc, r_tx=tx, d_tx=tx, tap=cfg.aprn.tap),
                  axis_name="batch", in_axes=(None, 0, None), out_axes=(None, None),
                  devices=jax.devices()[:devices])
  return tx, lambda state, batch: step(state, tiny_setup.shard(batch, devices),
                                       np.zeros((tiny_setup.POINTS, 2), np.float32))[0]


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.mark.slow  # test_end_to_end restores a four-device checkpoint on one device too
def test_round_trip_recognizer_alone_and_other_device_count(tmp_path):
  tx, step4 = pmapped(4)
  _, step2 = pmapped(2)
  fresh = tiny_setup.init_state(tiny_setup.config(), tx, tx)
  state = step4(fresh, tiny_setup.batch(8, seed=1))  # saved from a 4-device step
  mngr = checkpoints.manager(tmp_path / "ckpt", keep=2)
  checkpoints.save(mngr, state)

  restored = checkpoints.restore(mngr, fresh)
  assert_trees_equal(restored, state)
  assert int(restored.step) == 1

  recognizer, saved_step = checkpoints.restore_recognizer(tmp_path / "ckpt", fresh.recognizer)
  assert saved_step == 1
  assert_trees_equal(recognizer, state.recognizer)

  # Continues on 2 devices as it would on 4 (same global batch; float32 reduction order only).
  on_two = step2(restored, tiny_setup.batch(8, seed=2))
  on_four = step4(state, tiny_setup.batch(8, seed=2))
  for a, b in zip(jax.tree.leaves(on_two), jax.tree.leaves(on_four)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(b).max()))


def test_keeps_the_last_k_and_errors_name_the_folder(tmp_path):
  tx, _ = pmapped(4)
  state = tiny_setup.init_state(tiny_setup.config(), tx, tx)
  mngr = checkpoints.manager(tmp_path / "ckpt", keep=2)
  for step in (1, 2, 3):
    checkpoints.save(mngr, state.replace(step=np.int32(step)))
  assert mngr.all_steps() == [2, 3]
  with pytest.raises(FileNotFoundError, match="empty"):
    checkpoints.restore_recognizer(tmp_path / "empty", state.recognizer)
  # A corrupt checkpoint: the error names the folder; nothing is deleted.
  step_dir = tmp_path / "ckpt" / "3" / "recognizer"
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(ValueError, match="ckpt"):
    checkpoints.restore_recognizer(tmp_path / "ckpt", state.recognizer)
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["2", "3"]
