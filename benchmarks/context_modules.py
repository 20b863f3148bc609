"""Benchmark: context modules (PAM vs ISA vs axial attention) and JPU vs a dilated backbone.

Part 1 — attention modules on a `[1, s, s, channels]` feature map (512 channels, the
papers' setting), s in 65, 97, 129: DANet's position attention (dense non-local, the
baseline), ISA with 8×8 partitions, and 2-D axial attention (global, and span 65).
Printed: forward time, extra peak memory of the forward pass and multiply-adds, each also
as a ratio to PAM measured in the same run.

Part 2 — FastFCN's claim: ResNet-50/101 with dilation (output stride 8) + ASPP head,
against the plain ResNet (OS 32) + JPU + the same ASPP head (DeepLabV3 rates 12, 24, 36,
59 classes as PASCAL Context), on one 512×512 image (FastFCN's FPS protocol); both with
`deeplab_axial.models.backbones.resnet` (the same backbone code, only `output_stride` differs).
Printed: time, memory and multiply-adds of backbone-only (dilated backbone vs plain
backbone + JPU) and full models, and the dilated / JPU ratios.

Every configuration runs in its own subprocess: TF has no CPU memory statistics, so the
peak is `ru_maxrss` of that process after the forward passes minus `ru_maxrss` after the
model was built, run once on a tiny input and traced at the measured size (weights,
runtime start-up and the input are excluded). Times are the
median of `--repeats` inference calls of a `tf.function` after one warm-up call.

    python benchmarks/context_modules.py           # full run (~25 min on 2 loaded cores)
    python benchmarks/context_modules.py --quick   # smoke run (2–5 min, mostly start-up)
"""
import argparse
import json
import os
import subprocess
import sys

_ATTENTION_MODULES = ("pam", "isa", "axial_global", "axial_span65")


def _build_attention(module, channels):
  """The layer for `module`, or a string saying why it is unavailable."""
  from deeplab_axial import layers  # pylint: disable=import-outside-toplevel
  if module == "pam":
    return layers.PositionAttention()
  if module == "isa":
    return layers.InterlacedSparseSelfAttention(partition=(8, 8))
  axial = getattr(layers, "AxialAttention2D", None)
  if axial is None:
    return "deeplab_axial.layers.AxialAttention2D is not importable yet"
  return axial(channels, num_heads=8, span=None if module == "axial_global" else 65)


def _build_segmenter(variant, backbone_name, num_classes=59):
  """The 'dilated'/'jpu' full model or the '*_backbone' one (backbone [+ JPU] only)."""
  import tf_keras  # pylint: disable=import-outside-toplevel
  from deeplab_axial.layers import convolutions  # pylint: disable=import-outside-toplevel
  from deeplab_axial.models import context_heads  # pylint: disable=import-outside-toplevel
  from deeplab_axial.models.backbones import resnet  # pylint: disable=import-outside-toplevel
  dilated = variant.startswith("dilated")
  backbone = getattr(resnet, backbone_name)(output_stride=8 if dilated else 32)
  images = tf_keras.Input([None, None, 3])
  endpoints = backbone(images)
  if variant == "dilated_backbone":
    return tf_keras.Model(images, endpoints["res5"])
  if variant == "dilated":
    x = convolutions.ASPP(256, (12, 24, 36), name="aspp")(endpoints["res5"])
    return tf_keras.Model(images, tf_keras.layers.Conv2D(num_classes, 1)(x))
  head = context_heads.jpu_aspp_head(backbone.output, num_classes)
  if variant == "jpu_backbone":
    jpu = head.get_layer("jpu")
    return tf_keras.Model(images, jpu([endpoints[k] for k in ("res3", "res4", "res5")]))
  return tf_keras.Model(images, head({k: endpoints[k] for k in head.input})["semantic_logits"])


def _worker(config):
  """Runs one configuration in this process; returns a dict of measurements."""
  import resource  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab_axial.models import multiply_adds  # pylint: disable=import-outside-toplevel

  if config["part"] == "madds":
    shape = [1, config["height"], config["width"], config["channels"]]
    counts = {}
    for module in _ATTENTION_MODULES:
      layer = _build_attention(module, config["channels"])
      if not isinstance(layer, str):
        layer.build(shape)
        counts[module] = int(layer.compute_multiply_adds(shape))
    return counts
  if config["part"] == "attention":
    layer = _build_attention(config["module"], config["channels"])
    if isinstance(layer, str):
      return {"skipped": layer}
    shape = [1, config["size"], config["size"], config["channels"]]
    layer.build(shape)
    madds = int(layer.compute_multiply_adds(shape))
    model = layer
  else:
    model = _build_segmenter(config["variant"], config["backbone"])
    shape = [1, config["size"], config["size"], 3]
    madds = multiply_adds.count_multiply_adds(model, shape)
  forward = tf.function(lambda t: model(t, training=False))
  # A small run first: the runtime's one-off allocations (thread pools, kernel caches)
  # then fall before `before`, which leaves the memory that scales with the input.
  forward(tf.random.normal([1, 17, 17, shape[-1]]))
  x = tf.random.normal(shape)
  forward.get_concrete_function(x)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  forward(x)  # warm-up at the measured size
  times = []
  for _ in range(config["repeats"]):
    start = time.perf_counter()
    forward(x).numpy()
    times.append(time.perf_counter() - start)
  after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"time_s": float(np.median(times)), "peak_mb": (after - before) / 1024.0,
          "madds": madds}


def _run(config):
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
  command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)]
  try:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                            timeout=3600)
  except subprocess.TimeoutExpired:
    return {"skipped": "timed out after 3600 s"}
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode != 0 or not lines:
    tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
    return {"skipped": f"failed: {tail[0][:200]}"}
  return json.loads(lines[-1])


def _ratio(value, baseline):
  return f"{value / baseline:.3f}" if baseline else "n/a"


def _attention_part(sizes, channels, repeats):
  print(f"\n== Attention modules, 1 × s × s × {channels}, ratios to PAM ==")
  print(f"{'s':>4} {'module':<13} {'time ms':>10} {'peak MB':>9} {'GMAdds':>9} "
        f"{'time/PAM':>9} {'mem/PAM':>8} {'MAdds/PAM':>10}")
  for size in sizes:
    results = {module: _run({"part": "attention", "module": module, "size": size,
                             "channels": channels, "repeats": repeats})
               for module in _ATTENTION_MODULES}
    base = results["pam"]
    for module, result in results.items():
      if "skipped" in result:
        print(f"{size:>4} {module:<13} skipped: {result['skipped']}")
        continue
      ok = "skipped" not in base
      print(f"{size:>4} {module:<13} {1e3 * result['time_s']:>10.1f} {result['peak_mb']:>9.1f} "
            f"{result['madds'] / 1e9:>9.2f} "
            f"{_ratio(result['time_s'], base['time_s'] if ok else 0):>9} "
            f"{_ratio(result['peak_mb'], base['peak_mb'] if ok else 0):>8} "
            f"{_ratio(result['madds'], base['madds'] if ok else 0):>10}")


def _paper_setting_madds(channels):
  """M-Adds only (nothing runs) at the ISA code's benchmark input, 128×256 positions."""
  counts = _run({"part": "madds", "height": 128, "width": 256, "channels": channels})
  if "skipped" in counts or "pam" not in counts:
    print(f"M-Adds at 128×256: {counts.get('skipped', 'unavailable')}")
    return
  print(f"\nM-Adds only at 128 × 256 × {channels} (the ISA code's benchmark input; PAM "
        f"would need ~{4 * (128 * 256)**2 / 2**30:.0f} GiB per n×n float32 map):")
  for module, count in counts.items():
    print(f"  {module:<13} {count / 1e9:>9.1f} GMAdds  {_ratio(count, counts['pam']):>7} of PAM")


def _jpu_part(backbone, size, repeats):
  print(f"\n== {backbone}: dilated OS 8 vs plain OS 32 + JPU, 1 × {size} × {size} × 3 ==")
  print(f"{'model':<20} {'time ms':>10} {'peak MB':>9} {'GMAdds':>9}")
  results = {}
  for variant in ("dilated_backbone", "jpu_backbone", "dilated", "jpu"):
    results[variant] = result = _run({"part": "jpu", "variant": variant, "size": size,
                                      "backbone": backbone, "repeats": repeats})
    if "skipped" in result:
      print(f"{variant:<20} skipped: {result['skipped']}")
    else:
      print(f"{variant:<20} {1e3 * result['time_s']:>10.1f} {result['peak_mb']:>9.1f} "
            f"{result['madds'] / 1e9:>9.2f}")
  for dilated, fast, label in (("dilated_backbone", "jpu_backbone", "backbone (+JPU)"),
                               ("dilated", "jpu", "full model (+ASPP head)")):
    if "skipped" in results[dilated] or "skipped" in results[fast]:
      continue
    print(f"dilated / JPU, {label}: time "
          f"{_ratio(results[dilated]['time_s'], results[fast]['time_s'])}, memory "
          f"{_ratio(results[dilated]['peak_mb'], results[fast]['peak_mb'])}, M-Adds "
          f"{_ratio(results[dilated]['madds'], results[fast]['madds'])}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
  parser.add_argument("--sizes", type=int, nargs="+", default=[65, 97, 129])
  parser.add_argument("--channels", type=int, default=512)
  parser.add_argument("--image_size", type=int, default=512)
  parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"],
                      choices=["resnet50", "resnet101"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_jpu", action="store_true")
  parser.add_argument("--skip_attention", action="store_true")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(_worker(json.loads(args.worker))))
    return
  if args.quick:
    args.sizes, args.channels, args.image_size, args.repeats = [33, 49], 64, 128, 1
    args.backbones = ["resnet50"]
  if not args.skip_attention:
    _attention_part(args.sizes, args.channels, args.repeats)
    _paper_setting_madds(args.channels)
  if not args.skip_jpu:
    for backbone in args.backbones:
      _jpu_part(backbone, args.image_size, args.repeats)


if __name__ == "__main__":
  main()
