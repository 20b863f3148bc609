"""Input checks shared by the streaming metrics.

Static problems (dtype, rank, mismatched static shapes) raise `ValueError` at call or trace
time. Value problems (ids outside the label space) raise `ValueError` when running eagerly;
inside a `tf.function` they can only be detected at run time, so there the same message is
raised as `tf.errors.InvalidArgumentError` by a `tf.debugging` assertion.
"""
import numpy as np
import tensorflow as tf


def label_maps(y_true, y_pred):
  """Returns `y_true`, `y_pred` as integer tensors of shape `[batch, height, width]`.

  Args:
    y_true: integer label map, `[batch, height, width]` or `[height, width]`.
    y_pred: integer label map with the same shape as `y_true`.

  Raises:
    ValueError: for non-integer dtypes, ranks other than 2 or 3, or different shapes.
  """
  tensors = []
  for name, value in (("y_true", y_true), ("y_pred", y_pred)):
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not tf.as_dtype(dtype).is_integer:
      raise ValueError(f"{name} must be an integer label map, got dtype {tf.as_dtype(dtype).name}")
    tensor = tf.convert_to_tensor(value)
    if not tensor.dtype.is_integer:
      raise ValueError(f"{name} must be an integer label map, got dtype {tensor.dtype.name}")
    if tensor.shape.rank not in (2, 3):
      raise ValueError(f"{name} must have shape [batch, height, width] or [height, width], got "
                       f"shape {tensor.shape}")
    if tensor.shape.rank == 2:
      tensor = tensor[tf.newaxis]
    tensors.append(tensor)
  y_true, y_pred = tensors
  if not y_true.shape.is_compatible_with(y_pred.shape):
    raise ValueError(f"y_true and y_pred must have the same shape, got y_true {y_true.shape} "
                     f"and y_pred {y_pred.shape}")
  if tf.executing_eagerly():
    return y_true, y_pred
  with tf.control_dependencies([tf.debugging.assert_equal(
      tf.shape(y_true), tf.shape(y_pred),
      message="y_true and y_pred must have the same shape")]):
    return tf.identity(y_true), tf.identity(y_pred)


def check_in_range(values, invalid, name, description):
  """Fails when any element of `values` is flagged by the boolean tensor `invalid`.

  Args:
    values: tensor whose offending element is quoted in the error.
    invalid: boolean tensor with the shape of `values`.
    name: argument name quoted in the error ("y_true" or "y_pred").
    description: what the values should be, e.g. "semantic ids in [0, 19) or 255".

  Returns:
    A list of control dependencies (empty when executing eagerly).

  Raises:
    ValueError: eagerly, when an element is invalid.
  """
  if tf.executing_eagerly():
    invalid = invalid.numpy()
    if np.any(invalid):
      bad = np.unique(values.numpy()[invalid])
      raise ValueError(f"{name} contains {bad[:10].tolist()}; expected {description}")
    return []
  return [tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(invalid)),
      [f"{name} contains values outside the label space; expected {description}. First "
       "offending values:", tf.boolean_mask(values, invalid)[:10]])]


def check_bounds(values, upper, name, description):
  """Fails unless every element of `values` lies in `[0, upper)`; cheap on large tensors.

  Only the minimum and maximum are computed unless the check fails.

  Returns:
    A list of control dependencies (empty when executing eagerly).

  Raises:
    ValueError: eagerly, when an element is out of bounds.
  """
  low = tf.cast(tf.reduce_min(values), tf.int64)
  high = tf.cast(tf.reduce_max(values), tf.int64)
  if tf.executing_eagerly():
    if values.shape.num_elements() and (low < 0 or high >= upper):
      array = values.numpy()
      bad = np.unique(array[(array < 0) | (array >= upper)])
      raise ValueError(f"{name} contains {bad[:10].tolist()}; expected {description}")
    return []
  in_bounds = tf.logical_or(tf.equal(tf.size(values), 0),
                            tf.logical_and(low >= 0, high < upper))
  return [tf.debugging.Assert(
      in_bounds, [f"{name} contains values outside the label space; expected {description}. "
                  "min, max:", low, high])]
