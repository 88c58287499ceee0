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
Train and eval also write <workdir>/report.md (the table and the figures in <workdir>/figures/,
aprn_jax/report.py). Each stage shows one progress bar, or plain lines when stdout is not a
terminal; TensorFlow's, XLA's and absl's start-up logs are silenced unless --verbose.
Any config field can be overridden: --config.aprn.alpha=0.3 --config.train.batch_size=128.
"""
import os

from aprn_jax import host

host.keep_freed_memory()  # before JAX and TensorFlow start their threads (aprn_jax/host.py)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "analyse"], "What to do.")
flags.DEFINE_integer("step", None,
                     "--mode=eval/analyse: the checkpoint step (default: the latest).")
flags.DEFINE_bool("verbose", False,
                  "Show TensorFlow's, XLA's and absl's start-up and library logs, silenced by "
                  "default (input_pipeline/console.py).")
flags.DEFINE_bool("distributed", None,
                  "Join a job of several processes (multi-host GPUs, TPU pod slices) that JAX "
                  "detects (TPU pods, SLURM, Open MPI). Default: when a TPU pod's "
                  "TPU_WORKER_HOSTNAMES lists several hosts.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0's coordinator, for a job of several processes "
                    "started by hand (default: JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None,
                     "Processes of the job (default: JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None,
                     "This process's index in [0, num_processes) (default: JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not FLAGS.verbose:
    from input_pipeline import console  # before TensorFlow and JAX start: it sets their log level
    console.quiet()
  from aprn_jax import distributed  # after absl parsed the flags, before any computation
  auto_detect = FLAGS.distributed
  if auto_detect is None:
    auto_detect = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         auto_detect=auto_detect)
  from aprn_jax import run
  run.main(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.step)


if __name__ == "__main__":
  app.run(main)
