"""Shared pytest setup: legacy Keras, two logical CPU devices, deterministic seeds."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_CPUS = tf.config.list_physical_devices("CPU")
# Two logical CPUs let MirroredStrategy tests run on this 2-core machine. This must happen
# before any op initializes the runtime, which is why it lives at conftest import time.
tf.config.set_logical_device_configuration(
    _CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_REFERENCE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "reference")


@pytest.fixture(autouse=True)
def _seed_everything():
  np.random.seed(0)
  tf.random.set_seed(0)
  yield


@pytest.fixture(scope="session")
def two_cpu_strategy():
  """MirroredStrategy over the two logical CPU devices, shared by the whole session.

  One instance per process: several MirroredStrategy objects in one process can collide
  in their collective-op keys ("Shape mismatch in the collective instance").
  """
  return tf.distribute.MirroredStrategy(
      ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.fixture
def csrhddlam():
  """The official PyTorch axialnet module (test oracle); skips when torch or shared/ is absent."""
  torch = pytest.importorskip("torch")
  path = os.path.join(SHARED_REFERENCE, "csrhddlam")
  if not os.path.isfile(os.path.join(path, "axialnet.py")):
    pytest.skip(f"official PyTorch reference not found at {path}")
  import importlib.util  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  if "csrhddlam_ref" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "csrhddlam_ref", os.path.join(path, "__init__.py"), submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules["csrhddlam_ref"] = module
    spec.loader.exec_module(module)
  torch.set_num_threads(2)
  return sys.modules["csrhddlam_ref"]
