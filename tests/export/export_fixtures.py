"""Helpers for the export tests: a small Panoptic-DeepLab with varied outputs, images,
and running an export's signatures in a process that can import only TensorFlow."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf
import tf_keras

from deeplab_axial.data import pipeline
from deeplab_axial.data.encoding import Keys
from deeplab_axial.models import panoptic_deeplab
from tests import helpers

# Post-processing settings of every export here: small enough for tiny images.
POST_PROCESSING = {"top_k": 16, "stuff_area": 20, "center_threshold": 0.05, "nms_kernel": 3}
# Numeric subdirectories already in the base path before the shared export.
PREEXISTING_VERSIONS = ("3", "1")


def build_tiny_model(num_classes, seed=0):
  """A small Panoptic-DeepLab whose kernels are re-drawn so that outputs vary a lot.

  Freshly initialized heads predict a near-zero heatmap (no centres) and near-uniform
  classes; redrawing conv kernels/biases gives several classes, centres and instances.
  """
  model = panoptic_deeplab(
      helpers.tiny_backbone({"res2": 8, "res3": 8, "res5": 8}), num_classes, aspp_channels=8, atrous_rates=(1, 2, 3),
      semantic_decoder_channels=8, instance_decoder_channels=8,
      semantic_low_level_projections=(4, 4), instance_low_level_projections=(4, 4),
      semantic_head_channels=8, center_head_channels=4, offset_head_channels=4)
  rng = np.random.default_rng(seed)
  for variable in model.variables:
    name = variable.name
    if "kernel" in name:
      fan_in = int(np.prod(variable.shape[:-1])) or 1
      variable.assign(rng.normal(0.0, 3.0 / np.sqrt(fan_in), variable.shape))
    elif "bias" in name:
      variable.assign(rng.normal(0.0, 0.5, variable.shape))
  return model


def semantic_model(num_classes=4, seed=0):
  """A tiny semantic model: per-pixel logits (two convolutions) and a boundary logit, at input resolution."""
  images = tf_keras.Input((None, None, 3))
  x = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu")(images / 64.0)
  logits = tf_keras.layers.Conv2D(num_classes, 3, padding="same")(x)
  boundary = tf_keras.layers.Conv2D(1, 1)(x)
  model = tf_keras.Model(images, {"semantic_logits": logits, "boundary_logits": boundary})
  rng = np.random.default_rng(seed)
  for variable in model.variables:
    variable.assign(rng.normal(0.0, 1.0, variable.shape))
  return model


def classifier(num_classes=7, seed=0):
  """A tiny classifier: logits = a dense layer on the flattened 8 x 8 crop (position-sensitive)."""
  images = tf_keras.Input((8, 8, 3))
  flat = tf_keras.layers.Flatten()(images / 255.0)
  model = tf_keras.Model(images, tf_keras.layers.Dense(num_classes)(flat))
  rng = np.random.default_rng(seed)
  for variable in model.variables:
    variable.assign(rng.normal(0.0, 1.0, variable.shape))
  return model


def scene_images(rng, count, height, width):
  """uint8 images of a few flat rectangles on a noisy background (varied predictions)."""
  images = rng.integers(0, 60, (count, height, width, 3)).astype(np.uint8)
  for image in images:
    for _ in range(4):
      y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
      image[y:y + rng.integers(4, 12), x:x + rng.integers(4, 14)] = rng.integers(0, 256, 3)
  return images


def val_split(pattern, with_panoptic=True):
  """Original-size images (uint8), their encoded bytes and labels (panoptic maps, or
  class ids of classification records) of the TFRecords matching `pattern`."""
  images, encoded, labels = [], [], []
  for serialized in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))):
    example = pipeline.decode_example(serialized, decode_panoptic=with_panoptic)
    images.append(example["image"].numpy().astype(np.uint8))
    labels.append(example["panoptic" if with_panoptic else "label"].numpy())
    features = tf.io.parse_single_example(
        serialized, {Keys.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)})
    encoded.append(features[Keys.IMAGE_ENCODED].numpy())
  return images, encoded, labels


def batches(items, size):
  return [items[i:i + size] for i in range(0, len(items), size)]


_PLAIN_TF_SCRIPT = textwrap.dedent("""
    import sys

    class _Block:
      # Any attempt to import the package fails loudly.
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "deeplab_axial":
          raise ImportError("deeplab_axial must not be imported here")
        return None

    sys.meta_path.insert(0, _Block())
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_path, outputs_path = sys.argv[1:4]
    inputs = np.load(inputs_path)
    model = tf.saved_model.load(export_dir)
    results = {}
    for b in range(int(inputs["num_image_batches"])):
      outputs = model.signatures["serving_default"](
          images=tf.constant(inputs["images_%d" % b]))
      results.update({"default/%d/%s" % (b, k): v.numpy() for k, v in outputs.items()})
    for b in range(int(inputs["num_bytes_batches"])):
      encoded = [inputs["bytes_%d_%d" % (b, i)].tobytes()
                 for i in range(int(inputs["num_bytes_%d" % b]))]
      outputs = model.signatures["serve_image_bytes"](image_bytes=tf.constant(encoded))
      results.update({"bytes/%d/%s" % (b, k): v.numpy() for k, v in outputs.items()})
    assert not any(m.startswith("deeplab_axial") for m in sys.modules)
    np.savez(outputs_path, **results)
""")


def run_signatures_in_plain_tf(export_dir, image_batches, bytes_batches, folder):
  """Runs both signatures of an export in a fresh interpreter that can import only TF.

  Args:
    export_dir: the version directory.
    image_batches: list of uint8 `[b, h, w, 3]` arrays for `serving_default`.
    bytes_batches: list of lists of encoded images for `serve_image_bytes`.
    folder: a scratch directory.

  Returns:
    Dict "default/<batch>/<output>" and "bytes/<batch>/<output>" -> array.
  """
  inputs_path = os.path.join(folder, "inputs.npz")
  outputs_path = os.path.join(folder, "outputs.npz")
  arrays = {f"images_{b}": images for b, images in enumerate(image_batches)}
  for b, encoded in enumerate(bytes_batches):
    arrays[f"num_bytes_{b}"] = len(encoded)
    arrays.update({f"bytes_{b}_{i}": np.frombuffer(e, np.uint8)
                   for i, e in enumerate(encoded)})
  np.savez(inputs_path, num_image_batches=len(image_batches),
           num_bytes_batches=len(bytes_batches), **arrays)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  completed = subprocess.run(
      [sys.executable, "-c", _PLAIN_TF_SCRIPT, export_dir, inputs_path, outputs_path],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return dict(np.load(outputs_path))
