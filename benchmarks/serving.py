r"""Serving latency: exported SavedModel vs the eager Keras model + post-processing.

  python benchmarks/serving.py            # Panoptic-DeepLab ResNet-50, 19 classes, 129x257
  python benchmarks/serving.py --quick    # a tiny model, ~1 minute

For batch sizes 1, 4 and 8 it times (median of --repeats calls after one warm-up):
* baseline: the eager Keras model, softmax and eager `panoptic_inference` (what a user
  running the library in Python without tf.function gets);
* saved_model: `tf.saved_model.load(export)` → `signatures["serving_default"]` on uint8
  images (the whole graph: padding, model, post-processing, cropping);
and prints latency per call, images/s and the ratio baseline / saved_model.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from deeplab_axial import ops  # noqa: E402
from deeplab_axial.export import saved_model  # noqa: E402
from deeplab_axial import models  # noqa: E402

_THINGS = tuple(range(11, 19))  # Cityscapes-like label space
_POST = {"label_divisor": 1000, "ignore_label": 255, "center_threshold": 0.1,
         "nms_kernel": 7, "top_k": 200, "stuff_area": 2048}


def _tiny_model(num_classes):
  images = tf_keras.Input((None, None, 3))
  x = tf_keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(images)
  res2 = tf_keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(x)
  res3 = tf_keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(res2)
  res5 = tf_keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(res3)
  backbone = tf_keras.Model(images, {"res2": res2, "res3": res3, "res5": res5})
  return models.panoptic_deeplab(backbone, num_classes, aspp_channels=32,
                          semantic_decoder_channels=32, instance_decoder_channels=16,
                          semantic_head_channels=32, center_head_channels=16,
                          offset_head_channels=16)


def _median_seconds(fn, repeats):
  fn()  # warm-up (tracing, allocation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny model, small images")
  parser.add_argument("--batch_sizes", default="1,4,8")
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args(argv)
  num_classes = 19
  if args.quick:
    model, size, repeats = _tiny_model(num_classes), (65, 129), args.repeats or 3
    name = "tiny Panoptic-DeepLab"
  else:
    model = models.panoptic_deeplab_resnet50(num_classes)
    size, repeats, name = (129, 257), args.repeats or 3, "Panoptic-DeepLab ResNet-50"
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  export_base = tempfile.mkdtemp(prefix="serving_benchmark_")
  start = time.perf_counter()
  path = saved_model.export_saved_model(model, export_base, thing_class_ids=_THINGS,
                                        include_semantic_probs=False, **_POST)
  export_seconds = time.perf_counter() - start
  start = time.perf_counter()
  signature = tf.saved_model.load(path).signatures["serving_default"]
  load_seconds = time.perf_counter() - start
  print(f"{name}, {num_classes} classes, images {size[0]}x{size[1]}, median of {repeats}; "
        f"export {export_seconds:.1f} s, load {load_seconds:.1f} s")
  print("| batch | eager Keras + post-proc | SavedModel | eager img/s | SavedModel img/s "
        "| eager / SavedModel |")
  print("|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for batch in batch_sizes:
    images = rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8)

    def eager(images=images):
      outputs = model(tf.cast(images, tf.float32), training=False)
      result = ops.panoptic_inference(
          tf.nn.softmax(outputs["semantic_logits"]), outputs["center_heatmap"],
          outputs["center_offset"], thing_class_ids=_THINGS, semantic_is_probabilities=True,
          **_POST)
      return result["panoptic"].numpy()

    def served(images=images):
      return signature(images=tf.constant(images))["panoptic"].numpy()

    eager_seconds = _median_seconds(eager, repeats)
    served_seconds = _median_seconds(served, repeats)
    print(f"| {batch} | {eager_seconds * 1000:.0f} ms | {served_seconds * 1000:.0f} ms | "
          f"{batch / eager_seconds:.2f} | {batch / served_seconds:.2f} | "
          f"{eager_seconds / served_seconds:.2f}x |")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
