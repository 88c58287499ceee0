"""Trainer behaviour on a small in-memory data set: non-finite losses, config errors, resume."""
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from aprn_jax import checkpoints, trainer
from aprn_jax.data import TrainData
from configs import tiny


def fake_data(num_examples=32, num_classes=4):
  rng = np.random.RandomState(0)
  examples = dict(
      image=rng.randint(0, 256, (num_examples, 32, 32, 3)).astype(np.uint8),
      label=(np.arange(num_examples) % num_classes).astype(np.int64),
      landmarks=rng.uniform(4, 28, (num_examples, 51, 2)).astype(np.float32))
  return TrainData(dataset_fn=lambda: tf.data.Dataset.from_tensor_slices(examples),
                   num_examples=num_examples, num_classes=num_classes, num_landmarks=51,
                   stored_size=32, mean_face=np.zeros((51, 2), np.float32), protocol_root="")


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny.get_config()
  config.train.update(phases=("baseline",), log_every_steps=1, checkpoint_every_steps=1)
  config.optim.lr = 1e30  # the first update blows the parameters up
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite loss at step 2.*step 1"):
    trainer.train(config, fake_data(), str(tmp_path))
  mngr = checkpoints.manager(tmp_path / "baseline" / "checkpoints", read_only=True)
  assert mngr.all_steps() == [1]
  assert not os.path.exists(tmp_path / "baseline" / "done.json")


@pytest.mark.parametrize("field,value,message", [
    ("checkpoint_every_steps", 3, r"checkpoint_every_steps=3 must be a multiple"),
    ("batch_size", 6, r"batch_size=6 is not divisible by the 4 devices"),
    ("phases", ("baseline", "sft"), r"config\.train\.phases holds 'sft'"),
    ("log_every_steps", 0, r"config\.train\.log_every_steps=0 must be positive"),
])
def test_bad_train_config_is_named(field, value, message):
  config = tiny.get_config()
  config.train[field] = value
  with pytest.raises(ValueError, match=message):
    trainer.check_train_config(config)


def test_batch_larger_than_data_is_named(tmp_path):
  config = tiny.get_config()
  config.train.batch_size = 64
  with pytest.raises(ValueError, match=r"batch_size=64 is larger than the 32 training"):
    trainer.train(config, fake_data(), str(tmp_path))


def test_phase_resumes_from_its_last_checkpoint(tmp_path, capfd):
  config = tiny.get_config()
  config.train.update(phases=("baseline",), baseline_epochs=2)  # 4 steps, checkpoint at 4
  data = fake_data()
  trainer.train(config, data, str(tmp_path / "full"))
  # A run that stopped after its checkpoint at step 2: same folder, then resumed.
  config.train.checkpoint_every_steps = 2
  short = trainer.Phase(config, data, str(tmp_path / "cut"), "baseline")
  short.num_steps = 2
  trainer.train_phase(short)
  os.remove(short.done_path)
  trainer.train(config, data, str(tmp_path / "cut"))
  assert "resumed from step 2" in capfd.readouterr().out
  full = trainer.Phase(config, data, str(tmp_path / "full"), "baseline").final_recognizer()
  cut = short.final_recognizer()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(cut), jax.device_get(full))
