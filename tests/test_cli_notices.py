"""The commands do not print TFDS's "OpenCV is not installed" warning (PIL decodes on purpose)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Decodes a PNG with a TFDS Image feature as the pipeline does, with or without the cli's filter.
CODE = """
import io, sys
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
if sys.argv[1] == "quiet":
  from radimagenet_jax import cli
  cli.quiet_tfds_notices()
buf = io.BytesIO()
Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
image = tfds.features.Image(shape=(None, None, 1), encoding_format="png").decode_example_np(
    buf.getvalue())
assert image.shape == (4, 4, 1)
"""


def _stderr(mode):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", CODE, mode], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  return proc.stderr


def test_the_opencv_notice_is_filtered_where_the_commands_run():
  assert "OpenCV is not installed" in _stderr("plain")  # what TFDS prints without the filter
  assert "OpenCV is not installed" not in _stderr("quiet")
