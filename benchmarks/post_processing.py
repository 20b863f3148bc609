"""Benchmark: batched TF panoptic_inference (graph and XLA) vs the NumPy reference.

Inputs are synthetic but realistic Cityscapes-like head outputs: a panoptic label map of
random rectangles (19 classes, things 11-18), turned into noisy logits, centre heatmap
and offsets with `generate_panoptic_targets`. Each configuration prints the median
time of each implementation and the ratio NumPy / TF measured in the same run, and
checks that the panoptic maps are identical.

  python benchmarks/post_processing.py            # 1×1025×2049 and 4×513×1025
  python benchmarks/post_processing.py --quick    # small sizes, a smoke run
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_axial.ops import generate_panoptic_targets  # noqa: E402
from deeplab_axial.ops import panoptic_inference  # noqa: E402

from tests.reference.panoptic_numpy import panoptic_inference_reference  # noqa: E402

NUM_CLASSES = 19
THINGS = tuple(range(11, 19))
DIVISOR = 1000
OPTIONS = dict(thing_class_ids=THINGS, label_divisor=DIVISOR, center_threshold=0.1,
               nms_kernel=7, top_k=200, stuff_area=2048)


def synthetic_outputs(rng, batch, height, width, num_instances):
  """Noisy head outputs whose clean version is the targets of a random panoptic map."""
  panoptic = rng.integers(0, 11, (batch, 1, 1)) * DIVISOR + np.zeros((1, height, width),
                                                                       np.int64)
  for image in panoptic:
    for index in range(num_instances):
      y, x = rng.integers(0, height), rng.integers(0, width)
      size_y, size_x = rng.integers(height // 40 + 2, height // 6 + 3, 2)
      image[y:y + size_y, x:x + size_x] = rng.choice(THINGS) * DIVISOR + index + 1
  targets = generate_panoptic_targets(panoptic.astype(np.int32), label_divisor=DIVISOR,
                                      ignore_label=255, thing_class_ids=THINGS)
  logits = (np.eye(NUM_CLASSES, dtype=np.float32)[targets["semantic"].numpy()] * 4 +
            rng.normal(size=(batch, height, width, NUM_CLASSES)).astype(np.float32))
  heatmap = targets["center_heatmap"].numpy() + rng.normal(
      scale=0.02, size=(batch, height, width, 1)).astype(np.float32)
  offset = targets["center_offset"].numpy() + rng.normal(
      scale=1.0, size=(batch, height, width, 2)).astype(np.float32)
  return logits, heatmap, offset


def median_seconds(function, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run(batch, height, width, num_instances, repeats):
  rng = np.random.default_rng(0)
  logits, heatmap, offset = synthetic_outputs(rng, batch, height, width, num_instances)
  inputs = [tf.constant(v) for v in (logits, heatmap, offset)]
  graph = tf.function(lambda *args: panoptic_inference(*args, **OPTIONS))
  xla = tf.function(lambda *args: panoptic_inference(*args, **OPTIONS), jit_compile=True)

  def numpy_reference():
    return [panoptic_inference_reference(logits[i], heatmap[i], offset[i], **OPTIONS)[0]
            for i in range(batch)]

  expected = np.stack(numpy_reference())
  results = {}
  for name, function in (("tf graph", graph), ("tf xla", xla)):
    panoptic = function(*inputs)["panoptic"].numpy()  # warm-up: tracing and compiling
    results[name] = (median_seconds(lambda f=function: f(*inputs)["panoptic"].numpy(),
                                    repeats), np.array_equal(panoptic, expected))
  numpy_time = median_seconds(numpy_reference, max(1, repeats // 2))
  segments = len(np.unique(expected[0]))
  print(f"batch {batch} x {height}x{width}, {num_instances} instances/image "
        f"({segments} segments in image 0), median of {repeats}:")
  print(f"  numpy reference  {numpy_time * 1000:9.1f} ms")
  for name, (seconds, identical) in results.items():
    print(f"  {name:15s}  {seconds * 1000:9.1f} ms   numpy/tf = {numpy_time / seconds:5.2f}x"
          f"   panoptic identical to numpy: {identical}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args()
  repeats = args.repeats or (2 if args.quick else 5)
  if args.quick:
    configs = [(1, 257, 513, 30), (2, 129, 257, 10)]
  else:
    configs = [(1, 1025, 2049, 100), (4, 513, 1025, 50)]
  print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores")
  for config in configs:
    run(*config, repeats)


if __name__ == "__main__":
  main()
