"""aprn-jax: train and evaluate face recognition with the Adversarial Pose Regression Network.

    python main.py --config=configs/default.py --workdir=/tmp/aprn_default
    python main.py --config=configs/default.py --workdir=/tmp/aprn_default --mode=eval
    python main.py --config=configs/default.py --workdir=/tmp/aprn_default --mode=analyse

--mode=train (default) runs the configured phases (a finished phase is skipped, an unfinished
one resumes from its last checkpoint), then evaluates each phase's final recognizer and prints
the table (also written to <workdir>/results.json). --mode=eval restores the recognizer alone
from each phase's latest checkpoint (or --step) and writes <workdir>/eval.json. For your own
faces (face_folder, insightface_rec) eval reads what it needs of the training data from
<workdir>/data.json, written by training, so it runs once the image folder and its build are
gone. --mode=analyse
runs the paper's pose-invariance analyses (config.analysis) on the same checkpoints and writes
<workdir>/analysis/analysis.json and PNGs.
Any config field can be overridden: --config.aprn.alpha=0.3 --config.train.batch_size=128.
"""
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "analyse"], "What to do.")
flags.DEFINE_integer("step", None,
                     "--mode=eval/analyse: the checkpoint step (default: the latest).")
flags.DEFINE_bool("distributed", None,
                  "Call jax.distributed.initialize() (multi-host GPU/TPU). Default: when "
                  "JAX_COORDINATOR_ADDRESS or a TPU pod's TPU_WORKER_HOSTNAMES is set.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # orbax logs every save and restore
  import jax  # after absl parsed the flags, so XLA flags from the environment apply
  distributed = FLAGS.distributed
  if distributed is None:
    distributed = bool(os.environ.get("JAX_COORDINATOR_ADDRESS")
                       or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))
  if distributed:
    jax.distributed.initialize()
  from aprn_jax import run
  run.main(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.step)


if __name__ == "__main__":
  app.run(main)
