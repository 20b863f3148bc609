"""Runs pytest once per test file, a few files at a time, each in a fresh process.

The slow tests build full-size models (Axial-DeepLab XL, an S training step at 513²,
XLA compilations): one pytest process running many of them keeps the memory of each
(TensorFlow's caches and the allocator do not give it back), and two such workers have
exhausted this 24 GB machine. A process per file returns all of it when the file is done,
and a file is only started while the machine has `--start_above_gb` of memory available.

Files light enough to share a process can be named with --together: they run in one
pytest process, started before the others (together they are among the longest),
which saves each one's start-up
(importing TensorFlow and PyTorch, collecting: ~8 s a file); when that process fails,
each of its files counts as failed (its output names the failing tests).

Usage: python scripts/run_test_files.py [--jobs 2] [-m MARKEXPR] [--first FILE ...]
       [--together FILE ...] [pytest args ...]
The marker and pytest args select the tests (as `pytest --collect-only` would); each
file then runs exactly its selected tests. Prints each file's pytest output when the file
is done, then one summary line; exits 1 when a file failed (pytest's "no tests
collected" counts as passed).
"""
import argparse
import subprocess
import sys
import tempfile
import time

_NO_TESTS_COLLECTED = 5


def _available_gb():
  """MemAvailable of /proc/meminfo in GB (infinite where there is no /proc/meminfo)."""
  try:
    with open("/proc/meminfo") as meminfo:
      for line in meminfo:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return float("inf")


def _tests_by_file(marker, pytest_args):
  """{file: [test ids]} of the tests `marker` and `pytest_args` select, in collection
  order."""
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marker, *pytest_args],
      capture_output=True, text=True, check=False)
  if result.returncode not in (0, _NO_TESTS_COLLECTED):
    sys.exit(f"collecting the tests failed (exit {result.returncode}):\n"
             f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
  tests = {}
  for line in result.stdout.splitlines():
    if "::" in line:
      tests.setdefault(line.split("::", 1)[0], []).append(line)
  return tests


class _Run:
  """One pytest process for one or more files, its output captured in a temporary file."""

  def __init__(self, paths, test_ids):
    self.paths = paths
    self.output = tempfile.TemporaryFile(mode="w+")
    self.start = time.monotonic()
    self.process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "--durations=5", *test_ids],
        stdout=self.output, stderr=subprocess.STDOUT, text=True)

  def report(self):
    """Prints the captured output; returns True when the file passed."""
    seconds = time.monotonic() - self.start
    passed = self.process.returncode in (0, _NO_TESTS_COLLECTED)
    self.output.seek(0)
    print(f"== {' '.join(self.paths)}: {'passed' if passed else 'FAILED'} in "
          f"{seconds:.0f} s ==")
    print(self.output.read().rstrip(), flush=True)
    self.output.close()
    return passed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--jobs", type=int, default=2, help="files run at the same time")
  parser.add_argument("--start_above_gb", type=float, default=8.0,
                      help="start another file only with this much memory available "
                           "(one file always runs)")
  parser.add_argument("-m", dest="marker", default="", help="pytest marker expression")
  parser.add_argument("--first", nargs="+", default=[], metavar="FILE",
                      help="start these files (those selected) before the others, in this "
                           "order: the longest first, so that short files fill the end")
  parser.add_argument("--together", nargs="+", default=[], metavar="FILE",
                      help="run these files (those selected) in one shared process, "
                           "started before all others")
  args, pytest_args = parser.parse_known_args()
  start = time.monotonic()
  selected = _tests_by_file(args.marker, pytest_args)
  total = len(selected)
  together = [path for path in args.together if path in selected]
  pending = [(together, [test for path in together for test in selected.pop(path)])
             ] if together else []
  first = [path for path in args.first if path in selected]
  pending += [([path], selected.pop(path)) for path in first]
  pending += [([path], tests) for path, tests in selected.items()]
  running, failed = [], []
  while pending or running:
    while pending and len(running) < args.jobs and (
        not running or _available_gb() >= args.start_above_gb):
      running.append(_Run(*pending.pop(0)))
    time.sleep(1)
    for run in [run for run in running if run.process.poll() is not None]:
      running.remove(run)
      if not run.report():
        failed.extend(run.paths)
  minutes, seconds = divmod(round(time.monotonic() - start), 60)
  print(f"== {total - len(failed)}/{total} test files passed in {minutes} min {seconds} s"
        + (f"; failed: {' '.join(failed)}" if failed else "") + " ==")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
