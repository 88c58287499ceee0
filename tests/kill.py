"""SIGKILL a real training process once it has written a checkpoint (the resume tests)."""
import os
import signal
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_until_checkpoint(command, checkpoint_dir, min_step=1, timeout_s=600):
  """Starts `command` in the repository, SIGKILLs it once `checkpoint_dir` holds a complete
  checkpoint of step >= min_step (orbax renames a step's folder into place when it is)."""
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout_s
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(checkpoint_dir) and any(
        name.isdigit() and int(name) >= min_step for name in os.listdir(checkpoint_dir)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
