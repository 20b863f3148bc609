"""Helpers shared by tests (imported as `tests.helpers`); fixtures live in conftest.py."""
import json
import os
import socket
import subprocess
import tempfile
import time

import numpy as np

_LOOPBACK = "127.0.0.1"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skip_graph_optimizations():
  """Turns off Grappler's graph rewrites (constant folding, layout, op fusion; same results
  up to rounding) in this process.

  They took ~20 s of the ~90 s that a 2-step train + eval of the demo model costs, and a
  test runs each graph a few times. The test process (conftest) and the CLIs started
  through tests/run_without_graph_optimizations.py skip them; the documented commands
  (tests/docs) keep TF's default, and so do the cluster workers: the 2-worker panoptic
  evaluation test took 260 s without them against 238 s with them (idle, one run each).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def randomize_batch_norms(layer, rng):
  """Random running statistics, scales and offsets for every batch norm of `layer`.

  Fresh batch norms are the identity in inference mode (mean 0, variance 1, gamma 1,
  beta 0), which would hide a wrong normalization; `rng` is a `np.random.Generator`.
  """
  for weight in layer.weights:
    name = weight.name.split("/")[-1]
    if name.startswith("moving_variance"):
      weight.assign(rng.uniform(0.5, 2.0, weight.shape))
    elif name.startswith(("moving_mean", "beta")):
      weight.assign(rng.normal(0.0, 0.3, weight.shape))
    elif name.startswith("gamma"):
      weight.assign(rng.uniform(0.5, 1.5, weight.shape))


def tiny_backbone(widths, *, output_stride=16, input_shape=(None, None, 3),
                  batch_norm=None, name="tiny_backbone"):
  """A plain-Keras stand-in for a backbone: one 3x3 convolution + ReLU per endpoint.

  Args:
    widths: {endpoint name: channels}, in order. The first convolution has stride 4, each
      next one 2 while the output stride stays <= output_stride, else 1 (as a dilated
      ResNet).
    output_stride: the largest stride of an endpoint.
    input_shape: `(height, width, 3)`, None entries for any size.
    batch_norm: None, or `(momentum, epsilon)` of a batch norm after each convolution
      (which then has no bias).
    name: the model's name.

  Returns:
    A tf_keras.Model: images `[batch, height, width, 3]` → {name: `[batch, height / s,
    width / s, channels]`}.
  """
  import tf_keras  # pylint: disable=import-outside-toplevel
  images = tf_keras.Input(input_shape)
  x, stride, endpoints = images, 1, {}
  for index, (endpoint, channels) in enumerate(widths.items()):
    step = 4 if index == 0 else (2 if stride * 2 <= output_stride else 1)
    stride *= step
    x = tf_keras.layers.Conv2D(channels, 3, strides=step, padding="same",
                               use_bias=batch_norm is None)(x)
    if batch_norm is not None:
      x = tf_keras.layers.BatchNormalization(momentum=batch_norm[0], epsilon=batch_norm[1])(x)
    x = endpoints[endpoint] = tf_keras.layers.ReLU()(x)
  return tf_keras.Model(images, endpoints, name=name)


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((_LOOPBACK, 0))
    return s.getsockname()[1]


def run_local_cluster(commands, timeout_s):
  """Runs one process per command as the workers of a `TF_CONFIG` cluster on loopback.

  Args:
    commands: one argv list per worker; worker `i` gets task index `i` (0 is the chief).
    timeout_s: how long to wait for the workers.

  Returns:
    [(returncode, stdout + stderr)] of each worker, in order. When a worker fails, the
    others (which would wait for it until the timeout) are killed at once, and their
    output ends with a line naming the worker that failed first.
  """
  workers = [f"{_LOOPBACK}:{_free_port()}" for _ in commands]
  processes = []
  for index, command in enumerate(commands):
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # Workers import this checkout (`deeplab_axial`, `tests`), as pytest does.
    env["PYTHONPATH"] = os.pathsep.join(
        [_REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # Files, not pipes: the workers are polled together, and a full pipe would block one.
    log = tempfile.TemporaryFile(mode="w+")
    processes.append((subprocess.Popen(command, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, text=True), log))
  deadline = time.monotonic() + timeout_s
  reason = f"timed out after {timeout_s} s"
  killed = set()
  try:
    while any(process.poll() is None for process, _ in processes):
      failed = [(index, process.poll()) for index, (process, _) in enumerate(processes)
                if process.poll() not in (None, 0)]
      if failed:
        reason = "worker {} exited with code {}".format(*failed[0])
        break
      if time.monotonic() > deadline:
        break
      time.sleep(0.5)
  finally:
    for index, (process, _) in enumerate(processes):
      if process.poll() is None:
        process.kill()
        process.wait()
        killed.add(index)
  results = []
  for index, (process, log) in enumerate(processes):
    log.seek(0)
    output = log.read()
    log.close()
    if index in killed:
      output += f"\n[killed by run_local_cluster: {reason}]\n"
    results.append((process.returncode, output))
  return results


def tiny_imagenet_records(directory):
  """Converts a tiny 3-class ImageNet (train: 3 images a class, val: 2) into
  `directory/records`; returns that directory (`train-*` and `val-*` TFRecords).

  Class 0 is reddish, 1 greenish, 2 bluish, so a classifier can learn them in a few steps.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from deeplab_axial.data import datasets  # pylint: disable=import-outside-toplevel
  from deeplab_axial.data.converters import imagenet  # pylint: disable=import-outside-toplevel
  raw, records = os.path.join(directory, "raw"), os.path.join(directory, "records")
  synsets = datasets.imagenet_synsets()[:3]
  rng = np.random.default_rng(0)
  for split, count in (("train", 3), ("val", 2)):
    for label, synset in enumerate(synsets):
      folder = os.path.join(raw, split, synset)
      os.makedirs(folder)
      for index in range(count):
        colour = np.array([200 * (label == 0), 200 * (label == 1), 200 * (label == 2)])
        pixels = np.clip(colour + rng.integers(0, 40, size=(20, 24, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(
            os.path.join(folder, f"{synset}_{index}.JPEG"))
    imagenet.convert_imagenet(raw, records, split, num_shards=1, num_workers=1,
                              show_progress=False)
  return records
