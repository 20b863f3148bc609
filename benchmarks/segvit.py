"""Shrunk vs plain SegViT: multiply-adds (our counter) and forward time, as ratios.

Builds `models.segvit` (150 classes, ADE20K-like) for ViT-Tiny and ViT-Small, plain and
Shrunk (query downsampling at block 5 of 12, query upsampling), counts one forward
pass's multiply-adds with `models.count_multiply_adds` (weight layers plus attention
products, per image) and times a `tf.function` forward pass (median of `--repeats`,
batch 1). Prints Shrunk / plain ratios next to the paper's GFLOPs savings.

  python benchmarks/segvit.py            # 512×512, ViT-Tiny and ViT-Small
  python benchmarks/segvit.py --quick    # 256×256, ViT-Tiny, 2 repeats
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from deeplab_axial.models import count_multiply_adds  # noqa: E402
from deeplab_axial.models.segvit import segvit  # noqa: E402

# SegViT paper (other_seeds.md §5.4, §5.6): GFLOPs (fvcore, i.e. multiply-adds).
_PAPER = (
    ("ViT-B 512, Table 8: Shrunk (QD+QU) vs Single, ATM", 97.1, 115.8),
    ("ViT-B 512, Table 8: naive shrunk (QD only) vs Single", 74.1, 115.8),
    ("ViT-L 640, Table 1: Shrunk vs plain (whole model)", 373.5, 637.9),
)


def _measure(backbone, shrunk, size, repeats):
  model = segvit(150, backbone=backbone, input_shape=(size, size, 3), shrunk=shrunk)
  total, records = count_multiply_adds(model, (size, size, 3), per_layer=True)
  backbone_madds = sum(count for path, count in records if "/backbone/" in path)
  forward = tf.function(lambda x: model(x, training=False)["semantic_logits"])
  images = tf.random.uniform([1, size, size, 3], 0, 255)
  forward(images).numpy()  # trace + warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(images).numpy()
    times.append(time.perf_counter() - start)
  return total, backbone_madds, statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="256², ViT-Tiny, 2 repeats")
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  size, repeats = (256, 2) if args.quick else (args.size, args.repeats)
  backbones = ("vit_tiny",) if args.quick else ("vit_tiny", "vit_small")
  print(f"input {size}x{size}, batch 1, median of {repeats} runs "
        f"(shared machine: times are noisy)")
  print(f"{'model':<12} {'variant':<8} {'GMAdds':>8} {'backbone':>9} {'ms':>8}")
  for backbone in backbones:
    plain = _measure(backbone, False, size, repeats)
    shrunk = _measure(backbone, True, size, repeats)
    for name, (total, backbone_madds, seconds) in (("plain", plain), ("shrunk", shrunk)):
      print(f"{backbone:<12} {name:<8} {total / 1e9:8.2f} {backbone_madds / 1e9:9.2f} "
            f"{seconds * 1e3:8.1f}")
    print(f"{backbone:<12} shrunk/plain: multiply-adds {shrunk[0] / plain[0]:.3f}, "
          f"backbone {shrunk[1] / plain[1]:.3f}, time {shrunk[2] / plain[2]:.3f}")
  print("paper (GFLOPs ratio):")
  for label, shrunk_gflops, plain_gflops in _PAPER:
    print(f"  {label}: {shrunk_gflops}/{plain_gflops} = {shrunk_gflops / plain_gflops:.3f}")


if __name__ == "__main__":
  main()
