"""deeplab_axial: Axial-DeepLab and related context modules for TensorFlow 2 (tf_keras).

Importing the package selects the legacy (tf_keras) Keras for `tf.keras` only when the
user has not chosen already; it changes no other global TensorFlow or Keras state.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from deeplab_axial import layers  # noqa: E402  pylint: disable=wrong-import-position

__version__ = "0.1.0"

__all__ = ["layers", "__version__"]
