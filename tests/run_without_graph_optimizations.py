"""Runs a script as `__main__` with Grappler's rewrites off (tests.helpers says why).

  python tests/run_without_graph_optimizations.py trainer/train.py --flag=value ...

For tests that exercise a CLI in a subprocess where the graph optimizations do not matter
(kill-and-resume, ...): the script runs unchanged, with its own argv.
"""
import os
import runpy
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `tests`
from tests import helpers  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
  helpers.skip_graph_optimizations()
  script = os.path.abspath(sys.argv[1])
  sys.argv = sys.argv[1:]
  # As `python script` would have it; this checkout stays importable, as under pytest.
  sys.path.insert(0, os.path.dirname(script))
  runpy.run_path(script, run_name="__main__")
