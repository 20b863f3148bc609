"""Benchmark: axial training speed and memory against convolutions and DeepLab2 (issue 17).

Parts (`--parts`, default all but `profile`):

* `backbones`: training img/s (forward + backward + SGD-momentum update, one
  `tf.function`) and peak memory of Axial-ResNet-S (`--models` adds M, L, and
  "Axial-ResNet-S TF-op attention": without the fused CPU attention kernel) against ResNet-50
  at 224² batch 4 (global span) and 513² batch 1 (span 65). Every (model, setting) runs in
  its own subprocess; the models alternate, `--rounds` times, and the best step time and
  the smallest peak of each are kept. Peak = the child's `ru_maxrss`; "train MB" subtracts
  `ru_maxrss` after building the model (and the optimizer's slots).
* `layers`: the 2-D axial layer, 64 channels, 8 heads, batch 1, training step (forward in
  training mode + gradients of the weights and the input): ours global, ours span 65 and
  DeepLab2's `AxialAttention2D(filters=32)` (key depth 32, value depth 64 = ours with
  `query_key_fraction=0.5`, see ../shared/reference/deeplab2/NOTE.md; skipped with a
  message when that folder or `grpcio-tools`, which its loader needs, is absent) at
  65², 129², 257². Time: the three layers are called alternately in one process, best
  of `--repeats`. Memory: one subprocess per (layer, size), growth of the peak resident
  size during the first step after tracing (`_first_step_memory_bytes`).
* `memory`: `deeplab_axial.memory_model.estimate_training_memory_bytes` against the
  measured training-step memory of Axial-ResNet-S (span 65, batch 1, SGD-momentum step)
  at 224², 513², 769², and with recomputed blocks at 513² (one subprocess each). Measured
  = the peak of TensorFlow's CPU allocator during the first step minus what it held
  before the step (weights and optimizer slots): `tf.config.experimental
  .get_memory_info("CPU:0")`, the measure GPU users read for "GPU:0". The prediction is
  for the TF-op attention (what GPUs and TPUs run), so that step is traced without the
  fused CPU kernel; the same measure with the kernel is printed last. The growth of the
  peak resident size is printed beside it (it adds the runtime's one-off first-step
  costs and the allocator's own slack).
* `profile`: per-op time of one axial block's training step (see benchmarks/README.md).
* `recompute` (not in the default): Axial-ResNet-S with and without
  `model.backbone.recompute` (every axial block recomputed in the backward pass), same
  settings and measurement as `backbones`, ratios to the run without recomputation.

The machine is shared: read the ratios (measured alternately in one run), not the
absolute numbers; the load average is printed with every part.

    python benchmarks/training_speed.py                  # full table (~30-60 min, 2 cores)
    python benchmarks/training_speed.py --quick          # small sizes, smoke run (~5 min)
    python benchmarks/training_speed.py --parts layers --sizes 257
    python benchmarks/training_speed.py --parts profile --profile_size 65
    python benchmarks/training_speed.py --parts recompute [--quick]
"""
import argparse
import collections
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time

_DEEPLAB2_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                             os.pardir, "shared", "reference", "deeplab2")
_MODELS = {
    "ResNet-50": ("deeplab_axial.models", "resnet50", {}),
    "Axial-ResNet-S": ("deeplab_axial.models", "axial_resnet",
                       {"name": "axial_resnet_s"}),
    "Axial-ResNet-M": ("deeplab_axial.models", "axial_resnet",
                       {"name": "axial_resnet_m"}),
    "Axial-ResNet-L": ("deeplab_axial.models", "axial_resnet",
                       {"name": "axial_resnet_l"}),
    "Axial-ResNet-S recompute": ("deeplab_axial.models", "axial_resnet",
                                 {"name": "axial_resnet_s", "recompute": True}),
    "Axial-ResNet-S TF-op attention": ("deeplab_axial.models", "axial_resnet",
                                       {"name": "axial_resnet_s"}),
}
# Models whose child process runs without the fused CPU attention kernel.
_TF_OP_ATTENTION = {"Axial-ResNet-S TF-op attention"}
_LAYER_CHANNELS = 64
_LOCAL_SPAN = 65


def _load():
  """One line: the load averages, so that every table states the machine's load."""
  with open("/proc/loadavg", encoding="utf-8") as handle:
    return "load average " + " ".join(handle.read().split()[:3])


def _current_rss_bytes():
  with open("/proc/self/statm", encoding="utf-8") as handle:
    return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _first_step_memory_bytes(step):
  """Growth of the process's peak resident size during the first call of `step`.

  Measured on a fresh process after tracing (TF's CPU allocator keeps freed memory, so
  a later call shows no growth). It includes one-off runtime costs of the first call
  (graph optimisation, kernel creation: ~0.4 GB for Axial-ResNet-S on this CPU).
  """
  step.get_concrete_function()
  before = _current_rss_bytes()
  step().numpy()
  return _peak_rss_bytes() - before


def _peak_rss_bytes():
  import resource  # pylint: disable=import-outside-toplevel
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- children ----------------------------------------------------------------------------

def _build_model(label, span):
  import importlib  # pylint: disable=import-outside-toplevel
  module_name, function_name, kwargs = _MODELS[label]
  if label in _TF_OP_ATTENTION:  # read when the first training step is traced
    os.environ["DEEPLAB_AXIAL_FUSED_KERNEL"] = "0"
  kwargs = dict(kwargs)
  if label != "ResNet-50":
    kwargs.update(span=span)
  return getattr(importlib.import_module(module_name), function_name)(
      num_classes=1000, **kwargs)


def _classification_train_step(model, batch, size):
  """A compiled SGD step of `model` on one fixed random batch (1000-class labels)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
  optimizer.build(model.trainable_variables)
  images = tf.random.uniform([batch, size, size, 3])
  labels = tf.random.uniform([batch], 0, 1000, dtype=tf.int32)

  @tf.function
  def train_step():
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables))
    return loss

  return train_step


def _backbone_child(label, size, batch, span, steps):
  """Training img/s and memory of one backbone (runs in its own process)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tf_keras  # pylint: disable=import-outside-toplevel
  tf_keras.utils.set_random_seed(0)
  model = _build_model(label, span)
  train_step = _classification_train_step(model, batch, size)
  built = _peak_rss_bytes()

  train_step().numpy()  # trace and warm up
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    train_step().numpy()
    times.append(time.perf_counter() - start)
  return {"seconds": float(np.min(times)), "peak": _peak_rss_bytes(),
          "train": _peak_rss_bytes() - built}


def _make_layer(kind, size):
  """A 2-D axial layer of `_LAYER_CHANNELS` output channels: ours or DeepLab2's."""
  if kind == "deeplab2":
    from deeplab2.model.layers import axial_layers  # pylint: disable=import-outside-toplevel
    return axial_layers.AxialAttention2D(filters=_LAYER_CHANNELS // 2,
                                         query_shape=(size, size), memory_flange=(0, 0))
  # pylint: disable-next=import-outside-toplevel
  from deeplab_axial.layers.axial_blocks import AxialAttention2D
  span = _LOCAL_SPAN if kind == "span65" else None
  return AxialAttention2D(_LAYER_CHANNELS, num_heads=8, span=span,
                          max_global_length=max(size, 129))


def _layer_step(kind, size, deeplab2_dir):
  """A traced training step (forward + gradients of weights and input) of one layer."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if kind == "deeplab2":
    sys.path.insert(0, deeplab2_dir)
    import load  # pylint: disable=import-outside-toplevel
    load.deeplab2()
  layer = _make_layer(kind, size)
  inputs = tf.random.normal([1, size, size, _LAYER_CHANNELS])
  weights = tf.random.normal([1, size, size, _LAYER_CHANNELS])

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      loss = tf.reduce_sum(layer(inputs, training=True) * weights)
    gradients = tape.gradient(loss, [inputs] + layer.trainable_variables)
    return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g)) for g in gradients])

  step.get_concrete_function()
  return step


def _layers_time_child(sizes, kinds, repeats, deeplab2_dir):
  """Best-of-`repeats` step time of each layer kind, the kinds called alternately."""
  results = {}
  for size in sizes:
    steps = {kind: _layer_step(kind, size, deeplab2_dir) for kind in kinds}
    for step in steps.values():
      step().numpy()
    times = collections.defaultdict(list)
    for _ in range(repeats):
      for kind, step in steps.items():
        start = time.perf_counter()
        step().numpy()
        times[kind].append(time.perf_counter() - start)
    results[str(size)] = {kind: min(values) for kind, values in times.items()}
  return results


def _layer_memory_child(kind, size, deeplab2_dir):
  return {"bytes": _first_step_memory_bytes(_layer_step(kind, size, deeplab2_dir))}


def _memory_model_child(label, size, batch, span):
  """Predicted and measured training-step memory of `label` (one process per size).

  Measured twice: with the TF-op attention that the prediction is for (what GPUs and
  TPUs run), then with the fused CPU kernel.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab_axial import memory_model  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from deeplab_axial.layers import fused_attention
  model = _build_model(label, span)
  predicted = memory_model.estimate_training_memory_bytes(model, batch, (size, size))

  def first_step(tracing):
    """(allocator peak during the step over what was held, resident-size growth)."""
    train_step = _classification_train_step(model, batch, size)
    with tracing:
      train_step.get_concrete_function()
    tf.config.experimental.reset_memory_stats("CPU:0")
    held = tf.config.experimental.get_memory_info("CPU:0")["current"]
    resident = _current_rss_bytes()
    train_step().numpy()
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - held,
            _peak_rss_bytes() - resident)

  # The process's first step (its resident growth is the one printed) is the TF-op one.
  measured, resident = first_step(fused_attention.tf_ops_only())
  measured_fused, _ = first_step(contextlib.nullcontext())
  return {"predicted": predicted, "measured": measured, "resident": resident,
          "measured_fused": measured_fused}


_CHILDREN = {"backbone": _backbone_child, "layers_time": _layers_time_child,
             "layer_memory": _layer_memory_child, "memory_model": _memory_model_child}


def _run_child(name, *args):
  """Runs `_CHILDREN[name](*args)` in a fresh Python; returns its dict or {"error"}."""
  command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps([name, args])]
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if result.returncode != 0:
    return {"error": result.stderr.strip()[-1500:] or f"exit code {result.returncode}"}
  return json.loads(result.stdout.strip().splitlines()[-1])


# -- parts -------------------------------------------------------------------------------

def _settings(args):
  """(crop, batch, span) of the backbone rows: 224² b4 global and 513² b1 span 65."""
  return [(64, 2, None), (97, 1, 33)] if args.quick else [(224, 4, None),
                                                          (513, 1, _LOCAL_SPAN)]


def _backbones(args):
  print(f"\n## Backbones: training step (forward + backward + SGD momentum), "
        f"best of {args.steps} steps x {args.rounds} rounds; {_load()}")
  _compare_backbones(args, ["ResNet-50"] + args.models)


def _recompute(args):
  print(f"\n## Recomputed axial blocks (model.backbone.recompute): training step, "
        f"best of {args.steps} steps x {args.rounds} rounds; {_load()}")
  _compare_backbones(args, ["Axial-ResNet-S", "Axial-ResNet-S recompute"])


def _compare_backbones(args, rows):
  """Alternates the `rows` models (each step in its own child process) at every setting;
  prints img/s and peak memory, each also as a ratio to the first row."""
  for size, batch, span in _settings(args):
    best = {}
    for _ in range(args.rounds):
      for label in rows:
        result = _run_child("backbone", label, size, batch, span, args.steps)
        if "error" in result:
          print(f"{label} failed: {result['error']}")
          continue
        previous = best.get(label)
        if previous is None or result["seconds"] < previous["seconds"]:
          best[label] = dict(result, peak=min(
              result["peak"], previous["peak"]) if previous else result["peak"])
    print(f"\n{size}², batch {batch}, span {span or 'global'} ({_load()})")
    print(f"| backbone | img/s | × {rows[0]} | peak MB | train MB | peak × {rows[0]} |")
    print("|---|---|---|---|---|---|")
    baseline = best.get(rows[0])
    for label, result in best.items():
      speed = batch / result["seconds"]
      line = f"| {label} | {speed:.2f} | "
      line += f"{speed * baseline['seconds'] / batch:.2f} | " if baseline else "— | "
      line += f"{result['peak'] / 2**20:.0f} | {result['train'] / 2**20:.0f} | "
      line += f"{result['peak'] / baseline['peak']:.2f} |" if baseline else "— |"
      print(line, flush=True)


def _deeplab2_missing(deeplab2_dir):
  """Why DeepLab2's layer cannot be loaded here, or None."""
  if not os.path.isdir(deeplab2_dir):
    return f"{os.path.normpath(deeplab2_dir)} not found"
  if importlib.util.find_spec("grpc_tools") is None:
    return ("its loader compiles DeepLab2's protos with grpcio-tools, which this "
            "environment lacks (pip install 'grpcio-tools>=1.74,<1.79')")
  return None


def _layers(args):
  sizes = args.sizes or ([33, 65] if args.quick else [65, 129, 257])
  kinds = [kind for kind in args.layers if kind != "deeplab2"]
  if "deeplab2" in args.layers:
    missing = _deeplab2_missing(args.deeplab2_dir)
    if missing:
      print(f"DeepLab2 rows skipped: {missing}")
    else:
      kinds.append("deeplab2")
  print(f"\n## 2-D axial layer training step, {_LAYER_CHANNELS} channels, batch 1; time: "
        f"best of {args.repeats}, alternated in one process; {_load()}")
  times = _run_child("layers_time", sizes, kinds, args.repeats, args.deeplab2_dir)
  if "error" in times:
    print(f"timing failed: {times['error']}")
    return
  memory = {}
  for size in sizes:
    for kind in kinds:
      result = _run_child("layer_memory", kind, size, args.deeplab2_dir)
      memory[(kind, size)] = result.get("bytes")
      if "error" in result:
        print(f"memory of {kind} at {size}² failed: {result['error']}")
  reference = "deeplab2" if "deeplab2" in kinds else "global"
  print(f"load after the run: {_load()}")
  print(f"| size | layer | step ms | time × {reference} | peak MB | memory × {reference} |")
  print("|---|---|---|---|---|---|")
  for size in sizes:
    for kind in kinds:
      seconds = times[str(size)][kind]
      base_seconds = times[str(size)][reference]
      used, base_used = memory[(kind, size)], memory[(reference, size)]
      memory_ratio = f"{used / base_used:.2f}" if used and base_used else "—"
      used_text = f"{used / 2**20:.0f}" if used else "—"
      print(f"| {size}² | {kind} | {1e3 * seconds:.0f} | {seconds / base_seconds:.2f} | "
            f"{used_text} | {memory_ratio} |", flush=True)


def _memory(args):
  sizes = [65, 129] if args.quick else [224, 513, 769]
  rows = [("Axial-ResNet-S", size) for size in sizes]
  rows.append(("Axial-ResNet-S recompute", sizes[1]))
  print(f"\n## Memory model: span {_LOCAL_SPAN}, batch 1, SGD-momentum training step "
        f"(measured: TF CPU allocator peak during the first step minus what it held "
        f"before); {_load()}")
  print("| model | crop | predicted MB | measured MB (TF-op attention) | "
        "predicted / measured | resident growth MB | measured MB, fused CPU kernel |")
  print("|---|---|---|---|---|---|---|")
  for label, size in rows:
    result = _run_child("memory_model", label, size, 1, _LOCAL_SPAN)
    if "error" in result:
      print(f"{label} {size}² failed: {result['error']}")
      continue
    print(f"| {label} | {size}² | {result['predicted'] / 2**20:.0f} | "
          f"{result['measured'] / 2**20:.0f} | "
          f"{result['predicted'] / result['measured']:.2f} | "
          f"{result['resident'] / 2**20:.0f} | "
          f"{result['measured_fused'] / 2**20:.0f} |", flush=True)


def _profile(args):
  """Per-op time of one AxialBlock training step, from a FULL_TRACE of a v1 graph."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from deeplab_axial.layers.axial_blocks import AxialBlock
  size, span = args.profile_size, args.profile_span or None
  graph = tf.Graph()
  with graph.as_default():
    block = AxialBlock(_LAYER_CHANNELS, num_heads=8, span=span,
                       max_global_length=max(size, 129))
    inputs = tf.random.normal([1, size, size, 2 * _LAYER_CHANNELS])
    outputs = block(inputs, training=True)
    loss = tf.reduce_sum(outputs * tf.random.normal(tf.shape(outputs)))
    gradients = tf.gradients(loss, block.trainable_weights)
    # One op at a time, so that each op's time is its own (not shared with concurrent ops).
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1)
    with tf.compat.v1.Session(config=config) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(gradients)
      metadata = tf.compat.v1.RunMetadata()
      session.run(gradients, run_metadata=metadata, options=tf.compat.v1.RunOptions(
          trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
  by_op = collections.Counter()
  for device in metadata.step_stats.dev_stats:
    for node in device.node_stats:
      by_op[_profile_label(node.node_name)] += node.all_end_rel_micros
  total = sum(by_op.values())
  print(f"\n## Profile: AxialBlock({_LAYER_CHANNELS}) training step, {size}², span "
        f"{span or 'global'}; op time summed over both attention axes; {_load()}")
  print(f"total op time {total / 1e3:.0f} ms")
  print("| op | pass | ms | share |")
  print("|---|---|---|---|")
  for (name, direction), micros in by_op.most_common(args.profile_rows):
    print(f"| {name} | {direction} | {micros / 1e3:.0f} | {100 * micros / total:.1f}% |")


def _profile_label(node_name):
  """('einsum content_logits', 'backward') from a graph node name."""
  direction = "backward" if node_name.startswith("gradients") else "forward"
  parts = node_name.split("/")
  for marker in ("height_attention", "width_attention"):
    if marker in parts:
      parts = parts[parts.index(marker) + 1:]
      break
  else:
    parts = parts[-2:]
  # Drop the numbering TF adds to repeated names (einsum_3 -> einsum).
  parts = [part.rstrip("0123456789").rstrip("_") or part for part in parts]
  return "/".join(parts), direction


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--parts", nargs="+", default=["backbones", "layers", "memory"],
                      choices=["backbones", "layers", "memory", "profile", "recompute"])
  parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
  parser.add_argument("--models", nargs="+", default=["Axial-ResNet-S"],
                      choices=[label for label in _MODELS if label != "ResNet-50"])
  parser.add_argument("--rounds", type=int, default=2, help="alternations of the models")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per backbone run")
  parser.add_argument("--repeats", type=int, default=3, help="alternated layer steps")
  parser.add_argument("--sizes", type=int, nargs="+", help="layer sizes (default by mode)")
  parser.add_argument("--layers", nargs="+", default=["global", "span65", "deeplab2"],
                      choices=["global", "span65", "deeplab2"],
                      help="2-D layers to compare (DeepLab2's needs ~14 GB at 257²)")
  parser.add_argument("--profile_size", type=int, default=129)
  parser.add_argument("--profile_span", type=int, default=_LOCAL_SPAN,
                      help="0 = global")
  parser.add_argument("--profile_rows", type=int, default=30)
  parser.add_argument("--deeplab2_dir", default=_DEEPLAB2_DIR,
                      help="DeepLab2 reference subset (default ../shared/reference/deeplab2 "
                      "beside the repository)")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    name, child_args = json.loads(args.child)
    print(json.dumps(_CHILDREN[name](*child_args)))
    return
  if args.quick:
    args.rounds, args.steps, args.repeats = 1, 2, 2
  print(f"training_speed.py {' '.join(sys.argv[1:])}; {_load()}")
  parts = {"backbones": _backbones, "layers": _layers, "memory": _memory,
           "profile": _profile, "recompute": _recompute}
  for part in args.parts:
    parts[part](args)


if __name__ == "__main__":
  main()
