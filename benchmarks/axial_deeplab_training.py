"""Acceptance run: Axial-DeepLab training steps on random data on CPU (issue 5).

For each preset and size: builds the model (span 65, output stride 16), runs one
training step (Adam, the Panoptic-DeepLab loss on random targets) and reports the time,
then — with `--steps N` — keeps training on the same batch and prints the first and
last loss (it must decrease). Heavy on a 2-core machine: run it by hand, not in CI, from
the repository root with PYTHONPATH=. (the steps are in tests/reference/panoptic_training.py).

    python benchmarks/axial_deeplab_training.py                     # S/M/L at 513 and 641
    python benchmarks/axial_deeplab_training.py --presets axial_deeplab_s --sizes 513
    python benchmarks/axial_deeplab_training.py --quick             # S at 65, 20 steps
"""
import argparse
import os
import resource

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests.reference.panoptic_training import run  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", nargs="+",
                      default=["axial_deeplab_s", "axial_deeplab_m", "axial_deeplab_l"])
  parser.add_argument("--sizes", nargs="+", type=int, default=[513, 641])
  parser.add_argument("--steps", type=int, default=1, help="steps on the same batch")
  parser.add_argument("--quick", action="store_true", help="S at 65×65, 20 steps")
  args = parser.parse_args()
  if args.quick:
    args.presets, args.sizes, args.steps = ["axial_deeplab_s"], [65], 20
  print(f"{'preset':<18} {'size':>5} {'first loss':>11} {'last loss':>10} "
        f"{'step 1 s':>9} {'later s/step':>13} {'peak RSS GiB':>13}")
  for preset in args.presets:
    for size in args.sizes:
      first, last, first_seconds, later = run(preset, size, args.steps)
      peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
      print(f"{preset:<18} {size:>5} {first:>11.4f} {last:>10.4f} {first_seconds:>9.1f} "
            f"{later:>13.1f} {peak_gib:>13.1f}", flush=True)


if __name__ == "__main__":
  main()
