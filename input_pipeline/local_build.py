"""What the project's TFDS builders say while they build: they render or read local files, so
TFDS's "Downloading and preparing dataset Unknown size (download: Unknown size ...)" and its
own progress bars (which interleave with the build's, 52 fragments in one log) say nothing
true of them. A builder that mixes in `LocalBuild` names its folder once and leaves the
counting to its own `input_pipeline.console.Progress`.
"""
import sys

import tensorflow_datasets as tfds


class LocalBuild:
  """Mixed in before tfds.core.GeneratorBasedBuilder."""

  def download_and_prepare(self, *args, **kwargs):
    tfds.disable_progress_bar()  # the build counts its images itself
    return super().download_and_prepare(*args, **kwargs)

  def _log_download_bytes(self):  # TFDS's hook, printed before a build starts
    print(f"building {self.name}/{self.builder_config.name} {self.version} into "
          f"{self.data_dir}", file=sys.stdout, flush=True)

  def _log_download_done(self):  # TFDS's hook after the build: the Progress said it all
    pass
