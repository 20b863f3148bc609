"""The fused CPU attention kernel: against NumPy, against the TF-op path, and where it runs."""
import logging
import os
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import fused_attention
from deeplab_axial.layers.axial_attention import PositionSensitiveAxialAttention

_HAS_COMPILER = shutil.which(os.environ.get("CXX", "g++")) is not None
needs_kernel = pytest.mark.skipif(not _HAS_COMPILER,
                                  reason="no C++ compiler: the TF-op path runs instead")

# sequences, queries, keys, heads, depths of (qc/kc, qp/rq, kp/rk, v/rv)
_SIZES = dict(n=3, i=5, w=7, h=2, dc=3, dp=4, dr=2, dv=3)


def _operands(rng, n, i, w, h, dc, dp, dr, dv):
  shapes = [(n, i, h, dc), (n, w, h, dc), (n, i, h, dp), (i, w, dp), (n, w, h, dr),
            (i, w, dr), (n, w, h, dv), (i, w, dv)]
  return [rng.normal(size=shape) for shape in shapes]


def _reference(qc, kc, qp, rq, kp, rk, v, rv):
  """The kernel's maths in float64 NumPy: (content, position, log-normalizer)."""
  logits = (np.einsum("nihd,nwhd->nhiw", qc, kc) + np.einsum("nihd,iwd->nhiw", qp, rq)
            + np.einsum("nwhd,iwd->nhiw", kp, rk))
  shifted = logits - logits.max(-1, keepdims=True)
  normalizer = np.log(np.exp(shifted).sum(-1)) + logits.max(-1)
  weights = np.exp(logits - normalizer[..., None])
  content = np.einsum("nhiw,nwhd->nihd", weights, v)
  position = np.einsum("nhiw,iwd->nihd", weights, rv)
  return content, position, normalizer


@needs_kernel
def test_kernel_builds_on_this_machine():
  # With a compiler present, a failed build is a bug, not a fallback to hide.
  assert fused_attention.load_library() is not None


@needs_kernel
@pytest.mark.parametrize("sizes", [_SIZES, dict(_SIZES, i=17, w=33, h=1),
                                   dict(_SIZES, n=1, i=1, w=1)])
def test_kernel_matches_numpy_forward(sizes):
  operands = _operands(np.random.default_rng(0), **sizes)
  ops = fused_attention.load_library()
  content, position, normalizer = ops.deeplab_axial_attention_forward(
      *[tf.constant(x, tf.float32) for x in operands])
  expected = _reference(*operands)
  for actual, wanted in zip((content, position, normalizer), expected):
    np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_kernel_backward_matches_numeric_gradient_of_numpy_reference():
  rng = np.random.default_rng(1)
  operands = _operands(rng, **_SIZES)
  upstream = [rng.normal(size=(3, 5, 2, 3)) for _ in range(2)]

  def loss(values):
    content, position, _ = _reference(*values)
    return float(np.sum(content * upstream[0]) + np.sum(position * upstream[1]))

  ops = fused_attention.load_library()
  as_float32 = [tf.constant(x, tf.float32) for x in operands]
  _, _, normalizer = ops.deeplab_axial_attention_forward(*as_float32)
  gradients = ops.deeplab_axial_attention_backward(
      *as_float32, normalizer, *[tf.constant(u, tf.float32) for u in upstream])
  step = 1e-6
  for index, (value, gradient) in enumerate(zip(operands, gradients)):
    numeric = np.zeros_like(value)
    for position in np.ndindex(value.shape):
      shifted = [x.copy() for x in operands]
      shifted[index][position] += step
      above = loss(shifted)
      shifted[index][position] -= 2 * step
      numeric[position] = (above - loss(shifted)) / (2 * step)
    np.testing.assert_allclose(gradient.numpy(), numeric, rtol=1e-3, atol=1e-4,
                               err_msg=f"operand {index}")


@needs_kernel
def test_kernel_rejects_disagreeing_shapes():
  operands = [tf.constant(x, tf.float32)
              for x in _operands(np.random.default_rng(2), **_SIZES)]
  operands[3] = operands[3][:, :-1]  # query table with one key too few
  with pytest.raises(tf.errors.InvalidArgumentError, match="operand shapes disagree"):
    fused_attention.load_library().deeplab_axial_attention_forward(*operands)


# (axis, height, width, heads, filters, span, strides, use_batch_norm)
_LAYER_CASES = [
    ("width", 3, 9, 2, 16, None, 1, True),     # global (dense, no mask)
    ("height", 8, 3, 2, 16, None, 2, True),    # global, strided
    ("width", 2, 9, 2, 16, 7, 1, True),        # dense plan with the band mask
    ("height", 23, 2, 2, 16, 5, 1, True),      # blocked plan (key mask, band)
    ("width", 2, 40, 4, 32, 7, 2, True),       # blocked, several blocks, strided
    ("width", 2, 23, 2, 16, 5, 1, False),      # no batch norm
]


def _layer_step(layer, x, fused):
  @tf.function
  def step(inputs):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      outputs = layer(inputs, training=True)
      loss = tf.reduce_sum(outputs * tf.cos(outputs))
    gradients = tape.gradient(loss, [inputs] + layer.trainable_variables)
    return outputs, [tf.convert_to_tensor(g) for g in gradients]

  if fused:
    concrete = step.get_concrete_function(x)
  else:
    with fused_attention.tf_ops_only():
      concrete = step.get_concrete_function(x)
  ops = {op.type for op in concrete.graph.get_operations()}
  for function in concrete.graph._functions.values():  # pylint: disable=protected-access
    ops |= {node.op for node in function.definition.node_def}
  return concrete(x), ops


@needs_kernel
@pytest.mark.parametrize("axis,height,width,heads,filters,span,strides,batch_norm",
                         _LAYER_CASES)
def test_layer_training_step_equals_tf_op_path(axis, height, width, heads, filters, span,
                                               strides, batch_norm):
  x = tf.constant(np.random.default_rng(3).normal(size=(2, height, width, 8)), tf.float32)
  layers = []
  for _ in range(2):
    tf_keras.utils.set_random_seed(4)
    layers.append(PositionSensitiveAxialAttention(
        filters, axis, num_heads=heads, span=span, strides=strides,
        use_batch_norm=batch_norm, max_global_length=24))
    layers[-1].build(x.shape)
  (expected, expected_gradients), reference_ops = _layer_step(layers[0], x, fused=False)
  (actual, gradients), fused_ops = _layer_step(layers[1], x, fused=True)
  assert "DeeplabAxialAttentionForward" in fused_ops
  assert "DeeplabAxialAttentionBackward" in fused_ops
  assert not any(op.startswith("DeeplabAxial") for op in reference_ops)
  np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
  variables = [None] + layers[0].trainable_variables
  largest = max(np.max(np.abs(g.numpy())) for g in expected_gradients)
  for variable, value, wanted in zip(variables, gradients, expected_gradients):
    name = "inputs" if variable is None else variable.name
    if batch_norm and variable is layers[0].similarity_batch_norm.beta:
      # beta only shifts every logit of a head, which the softmax ignores: its true
      # gradient is zero, and both paths give rounding noise.
      assert np.max(np.abs(value.numpy())) < 1e-4 * largest
      continue
    scale = np.max(np.abs(wanted.numpy())) + 1e-6
    np.testing.assert_allclose(value.numpy() / scale, wanted.numpy() / scale, atol=2e-5,
                               err_msg=name)
  for kept, updated in zip(layers[0].non_trainable_variables,
                           layers[1].non_trainable_variables):
    np.testing.assert_allclose(updated.numpy(), kept.numpy(), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_backward_is_deterministic():
  x = tf.constant(np.random.default_rng(5).normal(size=(4, 16, 9, 8)), tf.float32)
  layer = PositionSensitiveAxialAttention(16, "height", num_heads=2, span=5,
                                          use_batch_norm=False)
  layer.build(x.shape)
  (_, first), _ = _layer_step(layer, x, fused=True)
  (_, second), _ = _layer_step(layer, x, fused=True)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@needs_kernel
def test_where_the_kernel_does_not_run(tmp_path):
  inputs = tf_keras.Input([None, None, 8])
  model = tf_keras.Model(inputs, PositionSensitiveAxialAttention(8, "width", num_heads=2,
                                                                 span=3)(inputs))
  spec = tf.TensorSpec([1, 5, 6, 8])

  def graph_ops(training, **function_options):
    function = tf.function(lambda x: model(x, training=training), **function_options)
    return {op.type for op in function.get_concrete_function(spec).graph.get_operations()}

  assert "DeeplabAxialAttentionForward" in graph_ops(True)
  assert "DeeplabAxialAttentionForward" not in graph_ops(False)
  assert "DeeplabAxialAttentionForward" not in graph_ops(True, jit_compile=True)
  assert fused_attention.usable(tf.float16, True) is False
  # Keras traces the training-mode call into a SavedModel too; it must stay servable
  # without this package (TF Serving).
  tf.saved_model.save(model, str(tmp_path / "saved"))
  with open(tmp_path / "saved" / "saved_model.pb", "rb") as f:
    assert b"DeeplabAxial" not in f.read()


def test_failed_build_warns_and_falls_back_to_tf_ops(monkeypatch, caplog):
  monkeypatch.setenv("CXX", "false")  # a compiler that always fails
  with tempfile.TemporaryDirectory() as cache:
    monkeypatch.setenv("DEEPLAB_AXIAL_KERNEL_CACHE", cache)
    fused_attention.load_library.cache_clear()
    try:
      with caplog.at_level(logging.WARNING):
        assert fused_attention.load_library() is None
      assert "fused axial-attention CPU kernel is unavailable" in caplog.text
      assert "false exited with 1" in caplog.text
      assert fused_attention.usable(tf.float32, True) is False
      layer = PositionSensitiveAxialAttention(8, "width", num_heads=2, span=3)
      assert layer(tf.ones([1, 4, 7, 8]), training=True).shape == (1, 4, 7, 8)
    finally:
      fused_attention.load_library.cache_clear()


def test_environment_variable_disables_the_kernel(monkeypatch):
  monkeypatch.setenv("DEEPLAB_AXIAL_FUSED_KERNEL", "0")
  fused_attention.load_library.cache_clear()
  try:
    assert fused_attention.load_library() is None
    assert fused_attention.usable(tf.float32, True) is False
  finally:
    fused_attention.load_library.cache_clear()
