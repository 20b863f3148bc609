"""Benchmark of position-sensitive axial attention: time and peak memory, as ratios.

Prints tables of measurements taken in one run, each with the baseline it is compared
with:

1. 2-D: dense self-attention (non-local, 8 heads) vs 2-D axial attention (global) vs
   2-D axial attention (span 65) on 32-channel features of 33², 65², 129², 257² (dense
   only where its HW x HW logits fit).
2. 1-D: global vs local (m = 65) along lengths 129 .. 4097.
3. Our global 1-D layer vs the official PyTorch `AxialAttention` (csrhddlam) on the same
   shapes, both on 2 threads (skipped without torch or ../shared/reference).
4. Span 15 vs global on 112² (2-D).
5. `jit_compile=True` vs not.

Time: forward pass in inference mode (batch norm with moving statistics) of a
`tf.function` with static shapes, median of several runs after a warm-up; the layers
compared in one row run in alternation (one call each per repeat), so load from other
processes affects them alike.

Peak memory: one subprocess per measurement. The child traces the layer with unknown
height/width on a tiny input first (so tracing and TF start-up are already paid), then
runs the real input while a thread samples the resident set size from /proc/self/statm
every millisecond; the result is the peak RSS during the run minus the RSS before it.
The kernel's high-water mark (`ru_maxrss`) is also read and the larger growth is
reported (it catches spikes shorter than the sampling period, but only once they exceed
the start-up peak). `tf.config.experimental.get_memory_info` does not work on CPU and
tracemalloc does not see TF's allocator. The figure includes the run's input and output
(identical for the compared methods).

Usage: python benchmarks/axial_attention.py [--quick] [--threads 2] [--repeats N]
       [--only 2d,1d,torch,span15,jit]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from deeplab_axial.layers import AxialAttention2D  # noqa: E402
from deeplab_axial.layers import PositionSensitiveAxialAttention  # noqa: E402
from tests.reference import official_axialnet  # noqa: E402  (the PyTorch oracle)

CHANNELS = 32
HEADS = 8
SECTIONS = ("2d", "1d", "torch", "span15", "jit")


class DenseSelfAttention(tf_keras.layers.Layer):
  """Non-local 2-D self-attention baseline: every pixel attends to every pixel."""

  def __init__(self, filters, num_heads, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.num_heads = num_heads

  def build(self, input_shape):
    key_depth = self.filters // 2
    self.kernel = self.add_weight(
        "kernel", (input_shape[-1], 2 * key_depth + self.filters),
        initializer="glorot_uniform")

  def call(self, inputs):
    batch, height, width = tf.shape(inputs)[0], tf.shape(inputs)[1], tf.shape(inputs)[2]
    qkv = tf.einsum("bhwc,cd->bhwd", inputs, self.kernel)
    qkv = tf.reshape(qkv, [batch, height * width, self.num_heads, -1])
    key_depth = self.filters // 2 // self.num_heads
    q, k, v = tf.split(qkv, [key_depth, key_depth, self.filters // self.num_heads], -1)
    weights = tf.nn.softmax(tf.einsum("bqhd,bkhd->bhqk", q, k), -1)
    out = tf.einsum("bhqk,bkhd->bqhd", weights, v)
    return tf.reshape(out, [batch, height, width, self.filters])


def build_layer(spec):
  """spec: dict(kind, span, length); kind is dense, axial2d, axial1d or width_layer.

  axial1d and width_layer are the 1-D width-axis layer, on one sequence or on a square
  feature map respectively.
  """
  kind, span, length = spec["kind"], spec.get("span"), spec["length"]
  if kind == "dense":
    return DenseSelfAttention(CHANNELS, HEADS)
  if kind == "axial2d":
    return AxialAttention2D(CHANNELS, num_heads=HEADS, span=span, max_global_length=length)
  return PositionSensitiveAxialAttention(CHANNELS, "width", num_heads=HEADS, span=span,
                                         max_global_length=length)


def input_shape(spec):
  if spec["kind"] == "axial1d":
    return (1, 1, spec["length"], CHANNELS)
  return (1, spec["length"], spec["length"], CHANNELS)


def _compiled_forward(spec, jit_compile=False):
  """A traced (and compiled) zero-argument forward pass of the layer described by spec."""
  layer = build_layer(spec)
  x = tf.random.normal(input_shape(spec))
  function = tf.function(lambda t: layer(t, training=False), jit_compile=jit_compile)
  function(x).numpy()  # trace (and compile)
  return lambda: function(x).numpy()


def time_layers(runs, repeats):
  """Median seconds of each (spec, jit_compile) in runs, timed in alternation.

  The compared layers run one after the other inside each repeat, so a burst of load
  from other processes hits all of them alike and their ratios stay meaningful.
  """
  forwards = [_compiled_forward(spec, jit) for spec, jit in runs]
  times = [[] for _ in runs]
  for _ in range(repeats):
    for forward, samples in zip(forwards, times):
      start = time.perf_counter()
      forward()
      samples.append(time.perf_counter() - start)
  return [float(np.median(samples)) for samples in times]


def time_layer(spec, repeats, jit_compile=False):
  return time_layers([(spec, jit_compile)], repeats)[0]


def time_torch_layer(length, repeats):
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  axialnet = official_axialnet.load()
  module = axialnet.AxialAttention(CHANNELS, CHANNELS, groups=HEADS, kernel_size=length,
                                   width=True).eval()
  x = torch.randn(1, CHANNELS, length, length)
  with torch.no_grad():
    module(x)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      module(x)
      times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure_memory_in_child(spec):
  """Runs in the child process: peak-RSS growth (MiB) of one forward pass."""
  layer = build_layer(spec)
  signature = [tf.TensorSpec([None, None, None, CHANNELS])]
  function = tf.function(lambda t: layer(t, training=False), input_signature=signature)
  function(tf.zeros([1, 3, 3, CHANNELS])).numpy()
  x = tf.random.normal(input_shape(spec))
  page = os.sysconf("SC_PAGE_SIZE")

  def rss():
    with open("/proc/self/statm") as statm:
      return int(statm.read().split()[1]) * page

  peak, done = [rss()], threading.Event()

  def sample():
    while not done.is_set():
      peak.append(rss())
      time.sleep(0.001)

  sampler = threading.Thread(target=sample)
  start_rss = rss()
  start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  sampler.start()
  function(x).numpy()
  done.set()
  sampler.join()
  growth = max(max(peak) - start_rss,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start_maxrss)
  return growth / 2 ** 20


def peak_memory(spec, threads):
  command = [sys.executable, os.path.abspath(__file__), "--threads", str(threads),
             "--child", json.dumps(spec)]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    return float("nan")
  return float(result.stdout.strip().splitlines()[-1])


def _fmt(value, digits=1):
  return "  n/a" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _ratio(numerator, denominator):
  if numerator is None or denominator is None or np.isnan(numerator) or np.isnan(
      denominator) or denominator == 0:
    return float("nan")
  return numerator / denominator


def benchmark_2d(sizes, repeats, threads):
  print("\n## 2-D: dense vs axial global vs axial span 65 (32 channels, 8 heads, batch 1)")
  print("| size | dense ms | global ms | span65 ms | global/dense t | span65/global t "
        "| dense MiB | global MiB | span65 MiB | span65/global mem |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for size in sizes:
    specs = {"dense": dict(kind="dense", length=size),
             "global": dict(kind="axial2d", span=None, length=size),
             "span65": dict(kind="axial2d", span=65, length=size)}
    dense_fits = (size * size) ** 2 * 4 * HEADS <= 8 * 2 ** 30 / 2
    if not dense_fits:
      del specs["dense"]
    times = dict(zip(specs, time_layers([(spec, False) for spec in specs.values()],
                                        repeats)))
    memory = {name: peak_memory(spec, threads) for name, spec in specs.items()}
    times.setdefault("dense", None)
    memory.setdefault("dense", None)
    print(f"| {size}² | {_fmt(1e3 * times['dense'] if times['dense'] else None)} | "
          f"{_fmt(1e3 * times['global'])} | {_fmt(1e3 * times['span65'])} | "
          f"{_fmt(_ratio(times['global'], times['dense']), 3)} | "
          f"{_fmt(_ratio(times['span65'], times['global']), 2)} | "
          f"{_fmt(memory['dense'])} | {_fmt(memory['global'])} | "
          f"{_fmt(memory['span65'])} | {_fmt(_ratio(memory['span65'], memory['global']), 3)} |")


def benchmark_1d(lengths, repeats, threads):
  print("\n## 1-D: global vs local span 65 (one sequence, 32 channels, 8 heads)")
  print("| length | global ms | span65 ms | span65/global t | global MiB | span65 MiB "
        "| span65/global mem |")
  print("|---|---|---|---|---|---|---|")
  for length in lengths:
    glob = dict(kind="axial1d", span=None, length=length)
    local = dict(kind="axial1d", span=65, length=length)
    t_global, t_local = time_layers([(glob, False), (local, False)], repeats)
    m_global, m_local = peak_memory(glob, threads), peak_memory(local, threads)
    print(f"| {length} | {_fmt(1e3 * t_global)} | {_fmt(1e3 * t_local)} | "
          f"{_fmt(_ratio(t_local, t_global), 2)} | {_fmt(m_global)} | {_fmt(m_local)} | "
          f"{_fmt(_ratio(m_local, m_global), 3)} |")


def benchmark_torch(sizes, repeats):
  print("\n## Our global width layer vs official PyTorch AxialAttention (eval, 2 threads)")
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("skipped: torch not installed")
    return
  if official_axialnet.unavailable_reason():
    print(f"skipped: {official_axialnet.unavailable_reason()}")
    return
  print("| size | ours ms | PyTorch ms | ours/PyTorch |")
  print("|---|---|---|---|")
  for size in sizes:
    ours = time_layer(dict(kind="width_layer", span=None, length=size), repeats)
    theirs = time_torch_layer(size, repeats)
    print(f"| {size}² | {_fmt(1e3 * ours)} | {_fmt(1e3 * theirs)} | "
          f"{_fmt(ours / theirs, 3)} |")


def benchmark_span15(repeats):
  print("\n## 2-D span 15 vs global at 112²")
  t_global, t_local = time_layers(
      [(dict(kind="axial2d", span=span, length=112), False) for span in (None, 15)],
      repeats)
  print("| global ms | span15 ms | global/span15 speed-up |")
  print("|---|---|---|")
  print(f"| {_fmt(1e3 * t_global)} | {_fmt(1e3 * t_local)} | {_fmt(t_global / t_local, 2)} |")


def benchmark_jit(sizes, repeats):
  print("\n## jit_compile=True vs not (2-D axial)")
  print("| size | span | plain ms | jit ms | jit/plain |")
  print("|---|---|---|---|---|")
  for size in sizes:
    for span in (None, 65):
      spec = dict(kind="axial2d", span=span, length=size)
      plain, jit = time_layers([(spec, False), (spec, True)], repeats)
      print(f"| {size}² | {span or 'global'} | {_fmt(1e3 * plain)} | {_fmt(1e3 * jit)} | "
            f"{_fmt(jit / plain, 2)} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
  parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads")
  parser.add_argument("--repeats", type=int, help="timed runs per measurement (default "
                      "2 with --quick, else 5)")
  parser.add_argument("--only", default=",".join(SECTIONS),
                      help=f"comma-separated tables to run, from {','.join(SECTIONS)}")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  only = set(args.only.split(","))
  if not only <= set(SECTIONS):
    parser.error(f"--only: unknown table(s) {sorted(only - set(SECTIONS))}, expected "
                 f"names from {SECTIONS}")
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  if args.child:
    print(measure_memory_in_child(json.loads(args.child)))
    return
  if args.quick:
    sizes_2d, lengths, torch_sizes, jit_sizes, repeats = [33], [129, 257], [33], [33], 2
  else:
    sizes_2d = [33, 65, 129, 257]
    lengths = [129, 257, 513, 1025, 2049, 4097]
    torch_sizes, jit_sizes, repeats = [33, 65, 129], [65, 129], 5
  repeats = args.repeats or repeats
  print(f"TensorFlow {tf.__version__}, {args.threads} intra-op threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  if "2d" in only:
    benchmark_2d(sizes_2d, repeats, args.threads)
  if "1d" in only:
    benchmark_1d(lengths, repeats, args.threads)
  if "torch" in only:
    benchmark_torch(torch_sizes, repeats)
  if "span15" in only and not args.quick:
    benchmark_span15(repeats)
  if "jit" in only:
    benchmark_jit(jit_sizes, repeats)


if __name__ == "__main__":
  main()
