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
    python benchmarks/backbones.py --size 513 --span 65   # Axial-DeepLab crop, local span
    python benchmarks/backbones.py --torch         # + axial50s forward vs PyTorch (global)
"""
import argparse
import importlib
import json
import os
import subprocess
import sys

from tests.reference import official_axialnet  # noqa: E402  (the PyTorch oracle)

BACKBONES = [
    ("ResNet-50", "deeplab_axial.models.backbones.resnet", "resnet50", {}),
    ("Axial-ResNet-S", "deeplab_axial.models.backbones.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_s"}),
    ("Axial-ResNet-M", "deeplab_axial.models.backbones.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_m"}),
    ("Axial-ResNet-L", "deeplab_axial.models.backbones.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_l"}),
]
# Axial rows take the attention span from --span (0 = global, the default at 224).
_AXIAL_FUNCTION = "axial_resnet"


def _measure(module_name, function_name, kwargs, size, batch, steps, span):
  """Runs in the child process; returns a dict of measurements (or the skip reason)."""
  import resource  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  try:
    builder = getattr(importlib.import_module(module_name), function_name)
  except (ImportError, AttributeError) as error:
    return {"skipped": f"{module_name}.{function_name} is not available ({error})"}
  if function_name == _AXIAL_FUNCTION:
    kwargs = dict(kwargs, span=span or None)
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
    # Gathered tables (attention) give IndexedSlices; densify so every gradient is real.
    return [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

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
      [module_name, function_name, kwargs, args.size, args.batch, args.steps,
       args.span])]
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if result.returncode != 0:
    return {"skipped": f"{label} failed:\n{result.stderr[-2000:]}"}
  return json.loads(result.stdout.strip().splitlines()[-1])


def _forward_seconds(forward, steps):
  """Median wall time of `forward()` over `steps` calls after one warm-up call."""
  import time  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  forward()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    forward()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _compare_axial50s_with_torch(batch, steps, size=224):
  """Eval-mode forward time of our axial50s (global span) vs csrhddlam's on 2 threads.

  The PyTorch model only runs at 224×224 (its attention lengths are fixed).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("PyTorch comparison skipped: torch is not installed")
    return
  if official_axialnet.unavailable_reason():
    print(f"PyTorch comparison skipped: {official_axialnet.unavailable_reason()}")
    return
  # pylint: disable-next=import-outside-toplevel
  from deeplab_axial.models.backbones.axial_resnet import axial_resnet
  torch.set_num_threads(2)
  tf.config.threading.set_intra_op_parallelism_threads(2)
  reference = official_axialnet.load().axial50s().eval()
  model = axial_resnet("axial50s", num_classes=1000, input_shape=(size, size, 3))
  images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
  torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  ours_forward = tf.function(lambda x: model(x, training=False))
  tensor = tf.constant(images)

  def torch_forward():
    with torch.no_grad():
      reference(torch_images)

  ours = _forward_seconds(lambda: ours_forward(tensor).numpy(), steps)
  theirs = _forward_seconds(torch_forward, steps)
  print(f"axial50s eval forward, {size}×{size}, batch {batch}, 2 threads: ours "
        f"{batch / ours:.2f} img/s, PyTorch {batch / theirs:.2f} img/s, "
        f"ours / PyTorch time {ours / theirs:.2f}")


# (label, builder module, function, kwargs, input size, paper params, paper M-Adds) —
# AD Tab. 1 (ImageNet, S width, papers.md §2.6) and Tab. 2 (COCO, 133 classes).
_PAPER_ROWS = [
    ("ResNet-50", "deeplab_axial.models.backbones.resnet", "resnet50", {"num_classes": 1000}, 224,
     25.6e6, 4.1e9),
    ("Axial-ResNet-S conv-stem", "deeplab_axial.models.backbones.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_s", "num_classes": 1000}, 224, 12.4e6, 2.8e9),
    ("Axial-ResNet-S full (m=15)", "deeplab_axial.models.backbones.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_s", "num_classes": 1000, "stem": "axial", "span": 15}, 224,
     12.5e6, 3.3e9),
    ("Axial-ResNet-M conv-stem", "deeplab_axial.models.backbones.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_m", "num_classes": 1000}, 224, None, None),
    ("Axial-ResNet-L conv-stem", "deeplab_axial.models.backbones.axial_resnet", "axial_resnet",
     {"name": "axial_resnet_l", "num_classes": 1000}, 224, None, None),
    ("Axial-DeepLab-L (m=65)", "deeplab_axial.models.meta.axial_deeplab", "axial_deeplab",
     {"name": "axial_deeplab_l", "num_classes": 133, "span": 65}, 1025, 44.9e6, 343.9e9),
]


def _print_paper_table():
  """Parameters and multiply-adds of our models next to the paper's numbers."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from deeplab_axial.models.multiply_adds import count_multiply_adds
  print(f"{'model':<28} {'input':>6} {'params':>8} {'paper':>7} {'M-Adds':>9} {'paper':>8}")
  for label, module_name, function_name, kwargs, size, paper_params, paper_madds in (
      _PAPER_ROWS):
    model = getattr(importlib.import_module(module_name), function_name)(**kwargs)
    parameters = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    madds = count_multiply_adds(model, (size, size, 3))
    paper_p = f"{paper_params / 1e6:.1f}M" if paper_params else "-"
    paper_m = f"{paper_madds / 1e9:.1f}B" if paper_madds else "-"
    print(f"{label:<28} {size:>6} {parameters / 1e6:>7.2f}M {paper_p:>7} "
          f"{madds / 1e9:>8.2f}B {paper_m:>8}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=224, help="square input size")
  parser.add_argument("--batch", type=int, default=8, help="images per step")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--quick", action="store_true", help="64×64, batch 2, 2 steps")
  parser.add_argument("--span", type=int, default=0,
                      help="axial attention span (0 = global; e.g. 65 at 513×513)")
  parser.add_argument("--torch", action="store_true",
                      help="also time our axial50s forward against the PyTorch reference "
                      "(always at 224×224)")
  parser.add_argument("--paper_table", action="store_true",
                      help="only print parameters and M-Adds next to the paper's tables")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_measure(*json.loads(args.child))))
    return
  if args.paper_table:
    _print_paper_table()
    return
  if args.quick:
    args.size, args.batch, args.steps = 64, 2, 2

  print(f"forward+backward, {args.size}×{args.size}, batch {args.batch}, "
        f"median of {args.steps} steps, axial span {args.span or 'global'}")
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

  if args.torch:
    _compare_axial50s_with_torch(args.batch, args.steps)


if __name__ == "__main__":
  main()
