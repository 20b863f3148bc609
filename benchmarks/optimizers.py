"""Benchmark: cost of one optimizer step, RAdam and Lookahead against tf_keras Adam.

Applies fixed random gradients to a set of variables shaped like a ResNet-style model
(many conv kernels and small BN/bias vectors) inside one `tf.function` and reports the
median wall time per step of each optimizer and its ratio to `tf_keras.optimizers.Adam`
measured in the same run, and the time of the first call (tracing the update, Grappler's
graph optimisation, building the slots), which every training process pays once. The forward/backward pass is not included: this isolates the
optimizer's own overhead (for Lookahead: the per-variable period checks and the sync).

Usage: python benchmarks/optimizers.py [--quick] [--threads 2]
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from deeplab_axial.training import optimizers  # noqa: E402


def _variable_shapes(width, blocks):
  """Bottleneck-like shapes: 1x1, 3x3, 1x1 kernels plus BN scale/offset per conv."""
  shapes = []
  for _ in range(blocks):
    for kernel in ((1, 1, 4 * width, width), (3, 3, width, width), (1, 1, width, 4 * width)):
      shapes += [kernel, (kernel[-1],), (kernel[-1],)]
  return shapes


def _time_optimizer(make_optimizer, shapes, steps, repeats):
  rng = np.random.default_rng(0)
  variables = [tf.Variable(rng.normal(size=s).astype(np.float32)) for s in shapes]
  gradients = [tf.constant(rng.normal(size=s).astype(np.float32) * 1e-3) for s in shapes]
  optimizer = make_optimizer()

  @tf.function
  def run():
    for _ in tf.range(steps):
      optimizer.apply_gradients(zip(gradients, variables))

  start = time.perf_counter()
  run()  # trace, optimise the graph, build the slots
  float(optimizer.iterations.numpy())
  first_call = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    float(optimizer.iterations.numpy())
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times), first_call


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small model, few steps")
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(args.threads)

  width, blocks, steps, repeats = (32, 4, 10, 3) if args.quick else (128, 16, 20, 5)
  shapes = _variable_shapes(width, blocks)
  parameters = sum(int(np.prod(s)) for s in shapes)
  candidates = {
      "Adam (tf_keras, baseline)": lambda: tf_keras.optimizers.Adam(1e-3),
      "SGD + Nesterov momentum": lambda: tf_keras.optimizers.SGD(0.1, momentum=0.9,
                                                                 nesterov=True),
      "RectifiedAdam": lambda: optimizers.RectifiedAdam(1e-3),
      "Lookahead(RectifiedAdam)": lambda: optimizers.Lookahead(optimizers.RectifiedAdam(1e-3)),
      "Lookahead(Adam)": lambda: optimizers.Lookahead(tf_keras.optimizers.Adam(1e-3)),
  }
  print(f"{len(shapes)} variables, {parameters / 1e6:.2f}M parameters, {steps} steps per "
        f"call, median of {repeats} calls, {args.threads} threads")
  results = {name: _time_optimizer(make, shapes, steps, repeats)
             for name, make in candidates.items()}
  # Adam is timed again last: the mean of both runs is the baseline, their spread a
  # measure of the machine's noise.
  adam_again = _time_optimizer(candidates["Adam (tf_keras, baseline)"], shapes, steps, repeats)
  adam_first = results["Adam (tf_keras, baseline)"]
  baseline = [(first + again) / 2 for first, again in zip(adam_first, adam_again)]
  print(f"Adam timed twice: {adam_first[0] * 1e3:.2f} and {adam_again[0] * 1e3:.2f} ms / "
        f"step, first call {adam_first[1]:.2f} and {adam_again[1]:.2f} s")
  print("| optimizer | ms / step | ratio to Adam | first call (trace, graph optimisation) s "
        "| ratio to Adam |\n|---|---|---|---|---|")
  for name, (seconds, first_call) in results.items():
    print(f"| {name} | {seconds * 1e3:.2f} | {seconds / baseline[0]:.2f}x | {first_call:.2f} "
          f"| {first_call / baseline[1]:.2f}x |")

if __name__ == "__main__":
  main()
