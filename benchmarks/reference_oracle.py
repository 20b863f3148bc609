"""The official PyTorch axialnet (../shared/reference/csrhddlam), loaded by path for the
benchmarks that time it against our layers (a test oracle; never part of the package)."""
import importlib
import importlib.util
import os
import sys

CSRHDDLAM_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             os.pardir, "shared", "reference", "csrhddlam")
_PACKAGE_NAME = "csrhddlam_reference"


def load_axialnet():
  """The reference's `axialnet` module (its package is imported once per process)."""
  if _PACKAGE_NAME not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        _PACKAGE_NAME, os.path.join(CSRHDDLAM_DIR, "__init__.py"),
        submodule_search_locations=[CSRHDDLAM_DIR])
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE_NAME] = package
    spec.loader.exec_module(package)
  return importlib.import_module(f"{_PACKAGE_NAME}.axialnet")
