"""Shared pytest setup: legacy Keras, two logical CPU devices, deterministic seeds."""
import gc
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from tests import helpers  # noqa: E402
from tests.reference import official_axialnet  # noqa: E402

_CPUS = tf.config.list_physical_devices("CPU")
# Two logical CPUs let MirroredStrategy tests run on this 2-core machine. This must happen
# before any op initializes the runtime, which is why it lives at conftest import time.
tf.config.set_logical_device_configuration(
    _CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2)
helpers.skip_graph_optimizations()


@pytest.fixture
def default_graph_optimizations():
  """TF's default Grappler rewrites for this test: it checks what a user sees, e.g. error
  messages that name tensors as the optimized graph names them. Functions instantiated
  earlier in the process keep the rewrites they were instantiated with."""
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
  try:
    yield
  finally:
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(autouse=True)
def _seed_everything():
  # Python's `random` too: tf_keras draws the seeds of unseeded initializers from it, so
  # without it every run (and every CI machine) tests other random weights.
  tf_keras.utils.set_random_seed(0)
  yield


@pytest.fixture(autouse=True, scope="module")
def _release_keras_state():
  """Drops Keras' global state and collects garbage after each test module, so that one
  process running many model-building modules does not keep their graphs alive."""
  yield
  tf_keras.backend.clear_session()
  gc.collect()


@pytest.fixture(scope="session")
def two_cpu_strategy():
  """MirroredStrategy over the two logical CPU devices, shared by the whole session.

  One instance per process: several MirroredStrategy objects in one process can collide
  in their collective-op keys ("Shape mismatch in the collective instance").
  """
  return tf.distribute.MirroredStrategy(
      ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.fixture
def mixed_precision():
  """Runs the test under the mixed_float16 global policy, restored afterwards."""
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)


@pytest.fixture
def official_resnet():
  """The reference's PyTorch ResNet module (test oracle); skips without torch or shared/."""
  reason = official_axialnet.unavailable_reason()
  if reason:
    pytest.skip(reason)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  return official_axialnet.load("resnet")
