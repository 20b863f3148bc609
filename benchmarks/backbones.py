"""Benchmark: forward+backward throughput and peak memory of classification backbones.

Each backbone in `BACKBONES` (ResNet-50 first: it is the baseline of every ratio) is
built with 1000 classes and trained-through on random images: one step = forward pass in
training mode, softmax cross-entropy, gradients of all trainable weights (no optimizer
update). Printed per backbone: images/s (median over `--steps` steps after one warm-up
step), peak memory, and both as ratios to ResNet-50 measured in the same run.

Every backbone runs in its own subprocess: TF has no CPU memory statistics, so "peak" is
the process's `ru_maxrss` after the steps, and "training memory" is that minus
`ru_maxrss` right after the model was built (weights and the TF runtime excluded).
Backbones whose module or function is not importable are skipped with a message.

Adding a backbone is one line in `BACKBONES`: (label, module, function, keyword args);
the function is called as `function(num_classes=1000, **kwargs)`.

    python benchmarks/backbones.py                 # 224×224, batch 8 (~5 min on 2 cores)
    python benchmarks/backbones.py --size 513      # larger inputs
    python benchmarks/backbones.py --quick         # smoke run, 64×64, batch 2 (~1 min)
"""
import argparse
import importlib
import json
import os
import subprocess
import sys

BACKBONES = [
    ("ResNet-50", "deeplab_axial.models.resnet", "resnet50", {}),
    ("Axial-ResNet-S", "deeplab_axial.models.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_s"}),
    ("Axial-ResNet-M", "deeplab_axial.models.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_m"}),
    ("Axial-ResNet-L", "deeplab_axial.models.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_l"}),
]


def _measure(module_name, function_name, kwargs, size, batch, steps):
  """Runs in the child process; returns a dict of measurements (or the skip reason)."""
  import resource  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  try:
    builder = getattr(importlib.import_module(module_name), function_name)
  except (ImportError, AttributeError) as error:
    return {"skipped": f"{module_name}.{function_name} is not available ({error})"}
  model = builder(num_classes=1000, **kwargs)
  parameters = int(sum(np.prod(w.shape) for w in model.trainable_weights))
  built_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

  images = tf.random.uniform([batch, size, size, 3])
  labels = tf.random.uniform([batch], 0, 1000, dtype=tf.int32)

  @tf.function
  def train_step():
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    return tape.gradient(loss, model.trainable_variables)

  tf.nest.map_structure(lambda g: g.numpy(), train_step())  # warm-up: trace and run once
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    tf.nest.map_structure(lambda g: g.numpy(), train_step())
    times.append(time.perf_counter() - start)
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"parameters": parameters, "images_per_second": batch / float(np.median(times)),
          "peak_mb": peak_rss / 1024.0, "training_mb": (peak_rss - built_rss) / 1024.0}


def _run_child(label, module_name, function_name, kwargs, args):
  command = [sys.executable, __file__, "--child", json.dumps(
      [module_name, function_name, kwargs, args.size, args.batch, args.steps])]
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if result.returncode != 0:
    return {"skipped": f"{label} failed:\n{result.stderr[-2000:]}"}
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=224, help="square input size")
  parser.add_argument("--batch", type=int, default=8, help="images per step")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--quick", action="store_true", help="64×64, batch 2, 2 steps")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_measure(*json.loads(args.child))))
    return
  if args.quick:
    args.size, args.batch, args.steps = 64, 2, 2

  print(f"forward+backward, {args.size}×{args.size}, batch {args.batch}, "
        f"median of {args.steps} steps")
  print(f"{'backbone':<16} {'params':>8} {'img/s':>8} {'× R50':>6} "
        f"{'peak MB':>8} {'train MB':>9} {'× R50':>6}")
  baseline = None
  for label, module_name, function_name, kwargs in BACKBONES:
    result = _run_child(label, module_name, function_name, kwargs, args)
    if "skipped" in result:
      print(f"{label:<16} skipped: {result['skipped']}")
      continue
    baseline = baseline or result
    print(f"{label:<16} {result['parameters'] / 1e6:>7.2f}M "
          f"{result['images_per_second']:>8.2f} "
          f"{result['images_per_second'] / baseline['images_per_second']:>6.2f} "
          f"{result['peak_mb']:>8.0f} {result['training_mb']:>9.0f} "
          f"{result['training_mb'] / max(baseline['training_mb'], 1.0):>6.2f}")


if __name__ == "__main__":
  main()
