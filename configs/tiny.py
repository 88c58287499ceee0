"""Tiny: a smoke test of the whole method in about a minute (and the tests' config).

    python main.py --config=configs/tiny.py --workdir=/tmp/aprn_tiny

The `tiny` synthetic data set (32x32), a 4-block ResNet, a few epochs per phase. The numbers
it prints mean nothing; it shows that training, checkpoints and evaluation work end to end.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.update(builder_config="tiny", image_size=32, crop_size=32)
  config.model.update(stage_sizes=(1, 1, 1, 1), width=4, embedding_dim=32)
  # Table 1 widths for every tap; D's warm-up holds checkpoints (every 4 steps) inside it.
  config.aprn.update(d_widths=(), d_warmup_steps=12)
  config.optim.update(lr=0.05, lr_decay_epochs=(4,))
  config.train.update(batch_size=16, baseline_epochs=2, aprn_epochs=1, log_every_steps=2,
                      checkpoint_every_steps=4, keep_checkpoints=2)
  config.eval.update(batch_size=32, benchmarks=("cfp_ff", "cfp_fp", "lfw", "bins", "ijba",
                                                "ijbc", "megaface", "multipie"))
  config.analysis.update(probe_steps=150, probe_batch_size=32, overlay_tile=96)
  return config
