"""Acceptance run: Axial-DeepLab training steps on random data on CPU (issue 5).

For each preset and size: builds the model (span 65, output stride 16), runs one
training step (Adam, the Panoptic-DeepLab loss on random targets) and reports the time,
then — with `--steps N` — keeps training on the same batch and prints the first and
last loss (it must decrease). Heavy on a 2-core machine: run it by hand, not in CI.

    python benchmarks/axial_deeplab_training.py                     # S/M/L at 513 and 641
    python benchmarks/axial_deeplab_training.py --presets axial_deeplab_s --sizes 513
    python benchmarks/axial_deeplab_training.py --quick             # S at 65, 20 steps
"""
import argparse
import os
import resource
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from deeplab_axial import losses  # noqa: E402
from deeplab_axial.models.meta.axial_deeplab import axial_deeplab  # noqa: E402


def random_panoptic_batch(batch, size, num_classes, seed=0):
  """Random images in [0, 255] and Panoptic-DeepLab targets of matching shapes."""
  rng = np.random.default_rng(seed)
  images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)
  ones = tf.ones([batch, size, size], tf.float32)
  targets = {
      "semantic": tf.constant(rng.integers(0, num_classes, (batch, size, size)), tf.int32),
      "semantic_weights": ones,
      "center_heatmap": tf.constant(rng.uniform(0, 1, (batch, size, size)), tf.float32),
      "center_weights": ones,
      "center_offset": tf.constant(rng.normal(0, 10, (batch, size, size, 2)), tf.float32),
      "offset_weights": ones,
  }
  return images, targets


def make_train_step(model, learning_rate=1e-3):
  """A compiled step: forward (training mode), Panoptic-DeepLab loss, Adam update."""
  loss_fn = losses.PanopticDeepLabLoss()
  optimizer = tf_keras.optimizers.Adam(learning_rate)

  @tf.function
  def train_step(images, targets):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = loss_fn(targets, outputs, tf.shape(images)[0])["total"]
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss

  return train_step


def run(preset, size, steps, batch=1, num_classes=19, span=65, width_multiplier=None):
  """Returns (first loss, last loss, seconds of the first step, seconds per later step)."""
  tf_keras.utils.set_random_seed(0)
  model = axial_deeplab(preset, num_classes, span=span, width_multiplier=width_multiplier)
  images, targets = random_panoptic_batch(batch, size, num_classes)
  train_step = make_train_step(model)
  start = time.perf_counter()
  losses_seen = [float(train_step(images, targets))]
  first_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps - 1):
    losses_seen.append(float(train_step(images, targets)))
  later = (time.perf_counter() - start) / max(steps - 1, 1)
  return losses_seen[0], losses_seen[-1], first_seconds, later


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", nargs="+",
                      default=["axial_deeplab_s", "axial_deeplab_m", "axial_deeplab_l"])
  parser.add_argument("--sizes", nargs="+", type=int, default=[513, 641])
  parser.add_argument("--steps", type=int, default=1, help="steps on the same batch")
  parser.add_argument("--quick", action="store_true", help="S at 65×65, 20 steps")
  args = parser.parse_args()
  if args.quick:
    args.presets, args.sizes, args.steps = ["axial_deeplab_s"], [65], 20
  print(f"{'preset':<18} {'size':>5} {'first loss':>11} {'last loss':>10} "
        f"{'step 1 s':>9} {'later s/step':>13} {'peak RSS GiB':>13}")
  for preset in args.presets:
    for size in args.sizes:
      first, last, first_seconds, later = run(preset, size, args.steps)
      peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
      print(f"{preset:<18} {size:>5} {first:>11.4f} {last:>10.4f} {first_seconds:>9.1f} "
            f"{later:>13.1f} {peak_gib:>13.1f}", flush=True)


if __name__ == "__main__":
  main()
