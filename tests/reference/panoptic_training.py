"""Training steps of an Axial-DeepLab preset on one random panoptic batch: shared by the
acceptance benchmark (benchmarks/axial_deeplab_training.py) and the model tests."""
import time

import numpy as np
import tensorflow as tf
import tf_keras

from deeplab_axial import losses
from deeplab_axial.models import axial_deeplab


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
  # The legacy Adam updates each variable with one fused op (ResourceApplyAdam); the
  # new-style one with ~40 ops, half the ops of this step's graph (and of its trace).
  optimizer = tf_keras.optimizers.legacy.Adam(learning_rate)
  # Slots made here: created inside the first call they make tf.function trace the whole
  # step twice.
  with tf.init_scope():
    optimizer._create_all_weights(model.trainable_variables)  # pylint: disable=protected-access

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
