"""Official-weight import: csrhddlam's PyTorch axialnet → our Axial-ResNet, logit parity
against committed outputs of a reduced-width official model (tests/fixtures)."""
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_axial.models.backbones.axial_resnet import axial_resnet
from deeplab_axial.models.backbones.axial_resnet import axial_resnet_from_options
from deeplab_axial.models import load_axialnet_state_dict
from deeplab_axial.models import torch_weights
from tests.fixtures import make_official_fixtures as fixture_maker
from tests.reference import official_fixtures

_RESNET = fixture_maker.RESNET
_SIZE = _RESNET["size"]
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _official():
  """(state_dict, NCHW images, {"logits_float64", "logits_float32"}) of the reduced-width
  official Axial-ResNet (tests/fixtures/make_official_fixtures.py)."""
  return official_fixtures.case(official_fixtures.load("axial_resnet.npz"), "model")


def _relative_error(actual, expected):
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@contextlib.contextmanager
def _keras_floatx(dtype):
  """Layers built inside compute in `dtype` (a global policy set earlier would win over
  floatx alone, e.g. the trainer's "float32")."""
  import tf_keras  # pylint: disable=import-outside-toplevel
  previous_floatx = tf_keras.backend.floatx()
  previous_policy = tf_keras.mixed_precision.global_policy()
  tf_keras.backend.set_floatx(dtype)
  tf_keras.mixed_precision.set_global_policy(dtype)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous_policy)
    tf_keras.backend.set_floatx(previous_floatx)


def _reduced_model(**kwargs):
  """Our model of the fixture's official layout and width."""
  return axial_resnet(_RESNET["name"], num_classes=_RESNET["num_classes"],
                      input_shape=(_SIZE, _SIZE, 3),
                      width_multiplier=_RESNET["width_multiplier"], **kwargs)


def _our_logits(state, images, dtype):
  """Our model with the official weights, run in `dtype`: logits [1, num_classes]."""
  with _keras_floatx(dtype):
    model = _reduced_model()
    loaded = load_axialnet_state_dict(model, state)
    assert len(loaded) == sum(1 for key in state
                              if not key.endswith(("num_batches_tracked", "flatten_index")))
    return model(images.transpose(0, 2, 3, 1).astype(dtype), training=False).numpy()


def test_reduced_axial50_float32_logits_match_official():
  # Against the float64 truth: measured 5.9e-6 (the official float32 logits: 4.3e-6).
  # Full-width axial50s with random BN statistics amplifies float32 rounding to ~1e-2 in
  # both implementations; at this width it does not.
  state, images, official = _official()
  actual = _our_logits(state, images, "float32")
  assert _relative_error(actual, official["logits_float64"]) < 1e-4
  assert _relative_error(actual, official["logits_float32"]) < 1e-4


def test_reduced_axial50_logits_match_official_in_float64():
  # Both sides in float64 (our logits layer stays float32, hence 1e-5 rather than 1e-12);
  # the full-width axial50s measured 3.1e-7 and 3.3e-7 (seeds 0, 1).
  state, images, official = _official()
  actual = _our_logits(state, images, "float64")
  assert _relative_error(actual, official["logits_float64"]) < 1e-5


def test_errors_list_missing_unexpected_and_mis_shaped_names():
  state, _, _ = _official()
  del state["layer2.0.bn1.running_var"]
  state["layer9.0.conv_down.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  state["layer1.0.conv_up.weight"] = state["layer1.0.conv_up.weight"][:-1]
  state["layer3.1.hight_block.flatten_index"] = np.arange(5)
  model = _reduced_model()
  before = model.get_layer("stem").conv.kernel.numpy()
  with pytest.raises(ValueError) as error:
    load_axialnet_state_dict(model, state)
  message = str(error.value)
  for text in ("1 missing: layer2.0.bn1.running_var",
               "1 unexpected: layer9.0.conv_down.weight",
               f"layer1.0.conv_up.weight: official shape "
               f"{tuple(state['layer1.0.conv_up.weight'].shape)}",
               "layer3.1.hight_block.flatten_index: 5 entries"):
    assert text in message
  np.testing.assert_array_equal(model.get_layer("stem").conv.kernel.numpy(), before)
  with pytest.raises(ValueError, match="conv stem"):
    load_axialnet_state_dict(
        axial_resnet(_RESNET["name"], stem="inception", span=5,
                     width_multiplier=_RESNET["width_multiplier"]), state)


def test_relative_table_offsets_and_resizing():
  # PT columns hold offsets -(k-1)..k-1: q/v by o - p, k by p - o. Ours: rows by p - o.
  k, dq = 3, 1
  offsets = np.arange(-(k - 1), k).astype(np.float32)  # column c ↔ offset c - (k - 1)
  table = np.stack([10 + offsets, 20 + offsets, 30 + offsets, 40 + offsets])
  ours = torch_weights.relative_table_from_torch(table, dq)
  p_minus_o = np.arange(-(k - 1), k)
  np.testing.assert_array_equal(ours[:, 0], 10 - p_minus_o)  # q: o - p = -(p - o)
  np.testing.assert_array_equal(ours[:, 1], 20 + p_minus_o)
  np.testing.assert_array_equal(ours[:, 2:], np.stack([30 - p_minus_o, 40 - p_minus_o], 1))
  padded = torch_weights.relative_table_from_torch(table, dq, rows=9)
  np.testing.assert_array_equal(padded[2:7], ours)
  assert not padded[:2].any() and not padded[7:].any()
  np.testing.assert_array_equal(torch_weights.relative_table_from_torch(table, dq, rows=3),
                                ours[1:4])


@pytest.mark.slow
def test_converter_cli_npz_checkpoint_restores_into_config_backbone(tmp_path):
  """.npz → CLI → checkpoint → the builder's backbone (255-long tables) gives PT logits."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab_axial.protos import experiment_pb2  # pylint: disable=import-outside-toplevel
  state, images, official = _official()
  npz = tmp_path / "official.npz"
  np.savez(npz, **{f"module.{k}": v for k, v in state.items()})
  prefix = str(tmp_path / "ckpt")
  width = _RESNET["width_multiplier"]
  completed = subprocess.run(
      [sys.executable, os.path.join(_REPO, "trainer", "convert_torch_weights.py"),
       f"--input={npz}", f"--output={prefix}", f"--name={_RESNET['name']}",
       f"--width_multiplier={width}", "--output_stride=32",
       f"--num_classes={_RESNET['num_classes']}"],
      env=dict(os.environ, PYTHONPATH=_REPO), capture_output=True, text=True, timeout=600,
      check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  options = experiment_pb2.BackboneOptions(name=_RESNET["name"], span=0, stem="conv",
                                           output_stride=32, width_multiplier=width)
  # PyTorch's BN epsilon (the config default is DeepLab2's 1e-3).
  model = axial_resnet_from_options(options, num_classes=_RESNET["num_classes"],
                                    batch_norm_epsilon=1e-5)
  tf.train.Checkpoint(backbone=model).read(prefix).assert_consumed()
  actual = model(images.transpose(0, 2, 3, 1), training=False).numpy()
  assert _relative_error(actual, official["logits_float32"]) < 1e-3


def test_read_state_dict_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    torch_weights.read_state_dict(str(tmp_path / "absent.npz"))
  (tmp_path / "weights.h5").write_bytes(b"")
  with pytest.raises(ValueError, match=r"expected a \.pth"):
    torch_weights.read_state_dict(str(tmp_path / "weights.h5"))
