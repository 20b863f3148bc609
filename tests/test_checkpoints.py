"""deeplab_axial.checkpoints: initial-checkpoint restore with exact reporting, the central
rows of relative-position tables, and errors for anything else that does not fit."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import checkpoints
from deeplab_axial.layers import axial_attention

_LENGTH = 5


def _model(span=None, width=4, extra_layer=False):
  """Conv -> axial attention along the height (global: 2 * 5 - 1 = 9 table rows)."""
  images = tf_keras.Input((_LENGTH, _LENGTH, 3))
  x = tf_keras.layers.Conv2D(width, 1, name="stem")(images)
  x = axial_attention.PositionSensitiveAxialAttention(
      width, "height", num_heads=1, span=span, max_global_length=_LENGTH,
      name="attention")(x)
  if extra_layer:
    x = tf_keras.layers.Conv2D(width, 1, name="extra")(x)
  return tf_keras.Model(images, x)


def _attention_table(model):
  return model.get_layer("attention").relative_embeddings


def _save(model, tmp_path):
  return tf.train.Checkpoint(backbone=model).save(str(tmp_path / "ckpt"))


def test_global_table_becomes_the_central_rows_of_a_span_table(tmp_path):
  source = _model(span=None)
  table = _attention_table(source)
  assert table.shape[0] == 2 * _LENGTH - 1
  # Hand-made rows: row r holds 100 * r + column, so the central rows are recognisable.
  hand_made = (100.0 * np.arange(table.shape[0])[:, None]
               + np.arange(table.shape[1])[None, :]).astype(np.float32)
  table.assign(hand_made)
  prefix = _save(source, tmp_path)
  target = _model(span=3)
  report = checkpoints.restore_initial({"backbone": target}, str(tmp_path))
  # Offsets -1, 0, 1 are rows 3, 4, 5 of the global table (row = offset + 4).
  np.testing.assert_array_equal(_attention_table(target).numpy(), hand_made[3:6])
  for name in ("stem",):
    for got, want in zip(target.get_layer(name).weights, source.get_layer(name).weights):
      np.testing.assert_array_equal(got.numpy(), want.numpy())
  assert report.path == prefix
  assert len(report.restored) == report.total == len(target.variables)
  assert not report.missing
  assert list(report.adapted.values()) == [((9, 8), (3, 8))]
  assert report.summary().startswith(
      f"initial checkpoint: restored {report.total}/{report.total} variables of backbone")


def test_missing_variables_fail_unless_partial_init_is_allowed(tmp_path):
  _save(_model(), tmp_path)
  target = _model(extra_layer=True)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"restored \d+/\d+ variables of backbone; not in the checkpoint: "
                           r"backbone/layer_with_weights-2/.*allow_partial_init"):
    checkpoints.restore_initial({"backbone": target}, str(tmp_path))
  report = checkpoints.restore_initial({"backbone": target}, str(tmp_path),
                                       allow_partial=True)
  assert len(report.missing) == 2  # the extra conv's kernel and bias
  assert len(report.restored) == report.total - 2


def test_other_shape_mismatches_name_the_variable_and_both_shapes(tmp_path):
  _save(_model(width=4), tmp_path)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"backbone/layer_with_weights-0/kernel: checkpoint \[1, 1, 3, 4\] "
                           r"vs model \[1, 1, 3, 8\]"):
    checkpoints.restore_initial({"backbone": _model(width=8)}, str(tmp_path))


def test_a_smaller_source_table_is_an_error(tmp_path):
  _save(_model(span=3), tmp_path)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"relative_embeddings: checkpoint \[3, 8\] vs model \[9, 8\]"):
    checkpoints.restore_initial({"backbone": _model(span=None)}, str(tmp_path))


def test_missing_checkpoint_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
    checkpoints.restore_initial({"backbone": _model()}, str(tmp_path / "nope"))
