"""Runs a benchmark's variants each in a fresh process, alternated, and keeps the best.

A fresh process per measurement keeps lazy imports and tracing caches from favouring
whichever variant runs second; alternating spreads the machine's drift over both.
"""
import argparse
import os
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(_REPO, "configs", "shapes", "axial_deeplab_demo.textproto")
VARIANTS = ("baseline", "ours")


def argument_parser(description):
  """The flags of a baseline-vs-ours benchmark: --config, --rounds and the hidden --child
  (the variant a child process measures)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", default=DEMO_CONFIG)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
  return parser


def compare(script, arguments, config, rounds):
  """Runs `python script *arguments --child=<variant>` for each of `VARIANTS`, `rounds`
  times; the child prints its seconds as the last line of its output. Prints each run,
  then the best of each and the ratio ours / baseline."""
  best = {}
  for round_index in range(rounds):
    for variant in VARIANTS:
      result = subprocess.run([sys.executable, script, *arguments, f"--child={variant}"],
                              capture_output=True, text=True, check=False)
      if result.returncode != 0:
        sys.exit(f"{variant} failed:\n{result.stderr[-3000:]}")
      seconds = float(result.stdout.strip().splitlines()[-1])
      print(f"round {round_index + 1}: {variant:8s} {seconds:6.1f} s", flush=True)
      best[variant] = min(best.get(variant, float("inf")), seconds)
  print(f"\n{os.path.relpath(config, _REPO)}: baseline {best['baseline']:.1f} s, "
        f"ours {best['ours']:.1f} s, ours / baseline {best['ours'] / best['baseline']:.2f}")
