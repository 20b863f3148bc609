"""Runs a benchmark's variants each in a fresh process, alternated, and keeps the best.

A fresh process per measurement keeps lazy imports and tracing caches from favouring
whichever variant runs second; alternating spreads the machine's drift over both.
"""
import subprocess
import sys


def best_seconds(script, arguments, variants, rounds):
  """Runs `python script *arguments --child=<variant>` for each variant, `rounds` times.

  The child prints its seconds as the last line of its output.

  Returns:
    {variant: the smallest seconds measured}.
  """
  best = {}
  for round_index in range(rounds):
    for variant in variants:
      result = subprocess.run([sys.executable, script, *arguments, f"--child={variant}"],
                              capture_output=True, text=True, check=False)
      if result.returncode != 0:
        sys.exit(f"{variant} failed:\n{result.stderr[-3000:]}")
      seconds = float(result.stdout.strip().splitlines()[-1])
      print(f"round {round_index + 1}: {variant:8s} {seconds:6.1f} s", flush=True)
      best[variant] = min(best.get(variant, float("inf")), seconds)
  return best
