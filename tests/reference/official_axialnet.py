"""The official PyTorch axialnet (csrhddlam/axial-deeplab in ../shared/reference), loaded by
path: the oracle behind the committed fixtures in tests/fixtures/official_axialnet and
the benchmarks that time it against our layers. Never part of the package."""
import importlib
import importlib.util
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _find_reference():
  """../shared/reference/csrhddlam of the checkout, or of its parent (a git worktree)."""
  candidates = [os.path.join(os.path.dirname(folder), "shared", "reference", "csrhddlam")
                for folder in (_REPO, os.path.dirname(_REPO))]
  return next((c for c in candidates if os.path.isdir(c)), candidates[0])


CSRHDDLAM_DIR = _find_reference()
_PACKAGE_NAME = "csrhddlam_reference"


def unavailable_reason():
  """Why the oracle cannot be loaded here (None when it can)."""
  if importlib.util.find_spec("torch") is None:
    return "torch is not installed"
  if not os.path.isfile(os.path.join(CSRHDDLAM_DIR, "axialnet.py")):
    return f"the official PyTorch reference is not at {CSRHDDLAM_DIR}"
  return None


def load(submodule="axialnet"):
  """The reference's `axialnet` (or `resnet`) module; its package is imported once."""
  reason = unavailable_reason()
  if reason:
    raise ImportError(reason)
  if _PACKAGE_NAME not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        _PACKAGE_NAME, os.path.join(CSRHDDLAM_DIR, "__init__.py"),
        submodule_search_locations=[CSRHDDLAM_DIR])
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE_NAME] = package
    spec.loader.exec_module(package)
  return importlib.import_module(f"{_PACKAGE_NAME}.{submodule}")
