"""deeplab_axial: Axial-DeepLab and related context modules for TensorFlow 2 (tf_keras).

Importing the package selects the legacy (tf_keras) Keras for `tf.keras` only when the
user has not chosen already; it changes no other global TensorFlow or Keras state.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import importlib

__version__ = "0.1.0"

__all__ = ["layers", "__version__"]


def __getattr__(name):
  # `deeplab_axial.layers` is imported on first use, so that light modules such as
  # `deeplab_axial.cli` and `deeplab_axial.errors` load without TensorFlow (a command-line
  # tool must configure TensorFlow's logging before TensorFlow is imported).
  if name == "layers":
    return importlib.import_module("deeplab_axial.layers")
  raise AttributeError(f"module 'deeplab_axial' has no attribute {name!r}")
