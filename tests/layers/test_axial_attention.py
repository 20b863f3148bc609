"""Tests of PositionSensitiveAxialAttention against a NumPy reference and PyTorch."""
import contextlib
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers.axial_attention import PositionSensitiveAxialAttention
from tests.fixtures import make_official_fixtures as fixture_maker
from tests.reference import official_fixtures

EPSILON = 1e-5


# ---------------------------------------------------------------------------------------
# NumPy reference written from AD Eq. 3/4 with the documented batch-norm semantics.
# ---------------------------------------------------------------------------------------

def _batch_norm(x, axes, params, training):
  """Normalizes x over `axes`; params = (gamma, beta, mean, var, valid-or-None)."""
  gamma, beta, moving_mean, moving_var, valid = params
  if training:
    weights = np.ones_like(x) if valid is None else np.broadcast_to(valid, x.shape)
    count = weights.sum(axis=axes, keepdims=True)
    mean = (x * weights).sum(axis=axes, keepdims=True) / count
    var = (weights * (x - mean) ** 2).sum(axis=axes, keepdims=True) / count
  else:
    mean, var = moving_mean, moving_var
  return (x - mean) / np.sqrt(var + EPSILON) * gamma + beta


def reference_axial_attention(x, weights, *, axis, num_heads, query_depth, span,
                              strides, training, use_batch_norm=True):
  """Position-sensitive axial attention, written directly from the equation.

  Args:
    x: [batch, height, width, channels] float64.
    weights: dict of NumPy arrays: qkv_kernel [C, heads*(2dq+dv)], table [rows, 2dq+dv]
      (row = (p - o) + (rows - 1) / 2), and per batch norm (qkv, similarity [3, heads],
      output [2 * filters] ordered (channel, term)) gamma/beta/moving_mean/moving_var.
    axis, num_heads, query_depth, span, strides, training: layer semantics.
    use_batch_norm: apply the three batch norms.

  Returns:
    [batch, height', width', filters].
  """
  if axis == "height":
    x = x.transpose(0, 2, 1, 3)
  batch, other, length, _ = x.shape
  table = weights["table"]
  centre = (table.shape[0] - 1) // 2
  head_depth = table.shape[1]
  value_depth = head_depth - 2 * query_depth
  filters = num_heads * value_depth

  def bn(name, values, axes, valid=None):
    if not use_batch_norm:
      return values
    params = [weights[f"{name}_{key}"] for key in ("gamma", "beta", "moving_mean",
                                                    "moving_var")]
    return _batch_norm(values, axes, params + [valid], training)

  qkv = bn("qkv", x @ weights["qkv_kernel"], (0, 1, 2))
  qkv = qkv.reshape(batch, other, length, num_heads, head_depth)
  q = qkv[..., :query_depth]
  k = qkv[..., query_depth:2 * query_depth]
  v = qkv[..., 2 * query_depth:]

  o = np.arange(length)[:, None]
  p = np.arange(length)[None, :]
  offset = p - o
  radius = length if span is None else (span - 1) // 2
  in_span = np.abs(offset) <= radius  # keys inside the axis by construction
  rel = table[np.clip(offset + centre, 0, table.shape[0] - 1)]  # [o, p, depth]
  r_q, r_k = rel[..., :query_depth], rel[..., query_depth:2 * query_depth]
  r_v = rel[..., 2 * query_depth:]

  # Similarity terms [b, other, head, o, p].
  qk = np.einsum("bxohd,bxphd->bxhop", q, k)
  qr = np.einsum("bxohd,opd->bxhop", q, r_q)
  kr = np.einsum("bxphd,opd->bxhop", k, r_k)
  logits = 0.0
  for term_index, term in enumerate((qk, qr, kr)):
    if use_batch_norm:
      params = [weights[f"similarity_{key}"][term_index][:, None, None]
                for key in ("gamma", "beta", "moving_mean", "moving_var")]
      term = _batch_norm(term, (0, 1, 3, 4), params + [in_span], training)
    logits = logits + term
  logits = np.where(in_span, logits, -np.inf)
  attention = np.exp(logits - logits.max(-1, keepdims=True))
  attention /= attention.sum(-1, keepdims=True)

  sv = np.einsum("bxhop,bxphd->bxohd", attention, v).reshape(batch, other, length, filters)
  sve = np.einsum("bxhop,opd->bxohd", attention, r_v).reshape(batch, other, length, filters)
  stacked = np.stack([sv, sve], -1).reshape(batch, other, length, 2 * filters)
  stacked = bn("output", stacked, (0, 1, 2)).reshape(batch, other, length, filters, 2)
  out = stacked.sum(-1)
  if strides > 1:
    # ceil(length / strides) windows; a partial last window averages what it holds.
    pooled = -(-length // strides)
    padded = np.full((batch, other, pooled * strides, filters), np.nan)
    padded[:, :, :length] = out
    out = np.nanmean(padded.reshape(batch, other, pooled, strides, filters), axis=3)
  if axis == "height":
    out = out.transpose(0, 2, 1, 3)
  return out


def randomize_and_export(layer, rng):
  """Gives every batch-norm variable random values; returns the weights as NumPy."""
  weights = {"qkv_kernel": layer.qkv_kernel.numpy().astype(np.float64),
             "table": layer.relative_embeddings.numpy().astype(np.float64)}
  if not layer.use_batch_norm:
    return weights
  for name, bn in (("qkv", layer.qkv_batch_norm), ("similarity", layer.similarity_batch_norm),
                   ("output", layer.output_batch_norm)):
    shape = bn.gamma.shape
    values = {"gamma": rng.uniform(0.5, 1.5, shape), "beta": rng.normal(0, 0.3, shape),
              "moving_mean": rng.normal(0, 0.3, shape),
              "moving_var": rng.uniform(0.5, 2.0, shape)}
    bn.gamma.assign(values["gamma"])
    bn.beta.assign(values["beta"])
    bn.moving_mean.assign(values["moving_mean"])
    bn.moving_variance.assign(values["moving_var"])
    weights.update({f"{name}_{key}": value for key, value in values.items()})
  return weights


def _make(x_shape, **kwargs):
  kwargs.setdefault("batch_norm_epsilon", EPSILON)
  layer = PositionSensitiveAxialAttention(**kwargs)
  layer.build(x_shape)
  return layer


CASES = [
    # (axis, length_h, length_w, heads, filters, span, strides)
    ("width", 3, 8, 2, 8, None, 1),
    ("height", 7, 3, 4, 16, None, 2),
    ("width", 2, 11, 2, 8, 5, 1),     # local, odd length, blocked path (length >= 2m)
    ("height", 12, 2, 2, 8, 5, 2),    # local, even length, blocked path, stride
    ("width", 2, 4, 2, 8, 7, 1),      # length < span, all keys in band
    ("height", 6, 2, 2, 8, 7, 1),     # (m+1)/2 < length < 2m: dense with band mask
    ("width", 2, 9, 2, 8, 5, 2),      # dense with band mask, stride
    ("width", 2, 11, 1, 4, 3, 3),     # radius 1 blocks
    ("height", 5, 2, 2, 8, 1, 1),     # span 1: attends to itself only
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis,height,width,heads,filters,span,strides", CASES)
def test_matches_numpy_reference(axis, height, width, heads, filters, span, strides,
                                 training):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, height, width, 6)).astype(np.float32)
  layer = _make(x.shape, filters=filters, axis=axis, num_heads=heads, span=span,
                strides=strides, max_global_length=12)
  weights = randomize_and_export(layer, rng)
  expected = reference_axial_attention(
      x.astype(np.float64), weights, axis=axis, num_heads=heads,
      query_depth=layer.query_depth, span=span, strides=strides, training=training)
  actual = layer(x, training=training).numpy()
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("span", [None, 5])
def test_matches_reference_without_batch_norm(span):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 3, 13, 8)).astype(np.float32)
  layer = _make(x.shape, filters=8, axis="width", num_heads=2, span=span,
                query_key_fraction=1.0, use_batch_norm=False, max_global_length=13)
  weights = randomize_and_export(layer, rng)
  expected = reference_axial_attention(
      x.astype(np.float64), weights, axis="width", num_heads=2, query_depth=4, span=span,
      strides=1, training=False, use_batch_norm=False)
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_train_mode_updates_moving_statistics_over_valid_pairs():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 2, 10, 4)).astype(np.float32)
  layer = _make(x.shape, filters=4, axis="width", num_heads=1, span=3,
                batch_norm_momentum=0.0)
  weights = randomize_and_export(layer, rng)
  layer(x, training=True)
  # With momentum 0 the moving statistics are the batch statistics of the last call.
  qkv = _batch_norm(x.astype(np.float64) @ weights["qkv_kernel"], (0, 1, 2),
                    [weights[f"qkv_{k}"] for k in ("gamma", "beta", "moving_mean",
                                                   "moving_var")] + [None], True)
  q, k = qkv[..., :2], qkv[..., 2:4]  # one head: q depth 2, k depth 2
  qk = np.einsum("bxod,bxpd->bxop", q, k)
  offset = np.arange(10)[None, :] - np.arange(10)[:, None]
  band = np.abs(offset) <= 1
  np.testing.assert_allclose(layer.similarity_batch_norm.moving_mean.numpy()[0, 0],
                             qk[..., band].mean(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(layer.similarity_batch_norm.moving_variance.numpy()[0, 0],
                             qk[..., band].var(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# The official PyTorch layer (global span) as an oracle, through committed fixtures.
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis,strides,training", fixture_maker.ATTENTION_CASES)
def test_matches_official_pytorch_layer(axis, strides, training):
  shape = fixture_maker.ATTENTION_SHAPE
  height, width, out_planes = shape["height"], shape["width"], shape["out_planes"]
  state, x, outputs = official_fixtures.case(
      official_fixtures.load("attention.npz"),
      fixture_maker.attention_case_name(axis, strides, training))
  length = height if axis == "height" else width
  layer = _make((3, height, width, shape["in_planes"]), filters=out_planes, axis=axis,
                num_heads=shape["groups"], strides=strides, max_global_length=length)
  official_fixtures.assign_attention(layer, state)
  actual = layer(x.transpose(0, 2, 3, 1), training=training).numpy()
  if strides > 1 and axis == "width":
    # PT's width layer pools both axes (AvgPool2d(s, s)); pool our output's height too.
    actual = actual[:, :height // 2 * 2].reshape(3, height // 2, 2, -1, out_planes).mean(2)
  np.testing.assert_allclose(actual, outputs["output"], rtol=1e-4, atol=1e-4)


def test_official_parameter_count_for_known_length():
  layer = _make((1, 28, 28, 32), filters=32, axis="height", num_heads=8,
                max_global_length=28)
  theirs = official_fixtures.load("attention.npz")["parameter_count_32x32_groups8_length28"]
  assert sum(int(np.prod(v.shape)) for v in layer.trainable_variables) == theirs


# ---------------------------------------------------------------------------------------
# Locality and equivariance of the local span.
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", ["height", "width"])
def test_local_span_ignores_inputs_beyond_radius(axis):
  span, length, changed = 5, 23, 11
  shape = (1, length, 3, 4) if axis == "height" else (1, 3, length, 4)
  x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
  layer = _make(shape, filters=8, axis=axis, num_heads=2, span=span)
  randomize_and_export(layer, np.random.default_rng(6))
  perturbed = x.copy()
  if axis == "height":
    perturbed[:, changed] += 3.0
  else:
    perturbed[:, :, changed] += 3.0
  delta = np.abs(layer(perturbed).numpy() - layer(x).numpy())
  delta = delta.max(axis=(0, 2, 3) if axis == "height" else (0, 1, 3))
  near = np.abs(np.arange(length) - changed) <= (span - 1) // 2
  assert np.all(delta[~near] == 0.0)
  assert np.all(delta[near] > 1e-3)


def test_local_span_translation_equivariant_in_interior():
  span, length, shift = 7, 30, 4
  radius = (span - 1) // 2
  x = np.random.default_rng(7).normal(size=(2, 2, length, 4)).astype(np.float32)
  shifted = np.roll(x, shift, axis=2)
  layer = _make(x.shape, filters=8, axis="width", num_heads=2, span=span)
  randomize_and_export(layer, np.random.default_rng(8))
  out, out_shifted = layer(x).numpy(), layer(shifted).numpy()
  interior = np.arange(radius, length - radius - shift)
  np.testing.assert_allclose(out_shifted[:, :, interior + shift], out[:, :, interior],
                             rtol=1e-5, atol=1e-5)


def test_local_span_equals_global_when_it_covers_the_axis():
  """span >= 2 * length - 1 sees every key; with BN off it must equal global attention."""
  x = np.random.default_rng(9).normal(size=(2, 3, 6, 4)).astype(np.float32)
  local = _make(x.shape, filters=8, axis="width", num_heads=2, span=11,
                use_batch_norm=False)
  global_ = _make(x.shape, filters=8, axis="width", num_heads=2, max_global_length=6,
                  use_batch_norm=False)
  global_.set_weights(local.get_weights())
  np.testing.assert_allclose(local(x).numpy(), global_(x).numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Errors, config, gradients, execution modes.
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=10, axis="width", num_heads=4), "divisible"),
    (dict(filters=8, axis="width", num_heads=8, query_key_fraction=0.5), "positive integer"),
    (dict(filters=12, axis="width", num_heads=2, query_key_fraction=0.25), "integer"),
    (dict(filters=8, axis="width", num_heads=2, span=4), "odd"),
    (dict(filters=8, axis="width", num_heads=2, span=0), "odd"),
    (dict(filters=8, axis="depth", num_heads=2), "axis"),
    (dict(filters=0, axis="width"), "filters"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    PositionSensitiveAxialAttention(**kwargs)


def test_bad_inputs_raise():
  layer = PositionSensitiveAxialAttention(8, "width", num_heads=2)
  with pytest.raises(ValueError, match="4-D"):
    layer(tf.zeros([2, 5, 8]))
  layer = PositionSensitiveAxialAttention(8, "height", num_heads=2, max_global_length=4)
  with pytest.raises(ValueError, match="max_global_length"):
    layer(tf.zeros([1, 5, 3, 8]))


def test_runtime_length_check_for_unknown_sizes():
  layer = PositionSensitiveAxialAttention(8, "width", num_heads=2, max_global_length=4)
  call = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 8])])
  assert call(tf.zeros([1, 2, 4, 8])).shape == (1, 2, 4, 8)
  with pytest.raises(tf.errors.InvalidArgumentError, match="max_global_length"):
    call(tf.zeros([1, 2, 5, 8]))


def test_get_config_round_trip():
  layer = PositionSensitiveAxialAttention(
      16, "height", num_heads=4, span=9, query_key_fraction=1.0, strides=2,
      use_batch_norm=False, max_global_length=33, batch_norm_momentum=0.99,
      batch_norm_epsilon=1e-3, synchronized_batch_norm=True, name="attention")
  config = layer.get_config()
  clone = PositionSensitiveAxialAttention.from_config(config)
  assert clone.get_config() == config


@pytest.mark.slow  # SavedModel/.keras export: ~10-20 s on the shared machine
def test_model_save_and_load_round_trip():
  inputs = tf_keras.Input([None, None, 8])
  outputs = PositionSensitiveAxialAttention(8, "width", num_heads=2, span=3)(inputs)
  outputs = PositionSensitiveAxialAttention(8, "height", num_heads=2, strides=2)(outputs)
  model = tf_keras.Model(inputs, outputs)
  x = np.random.default_rng(10).normal(size=(2, 6, 7, 8)).astype(np.float32)
  expected = model(x).numpy()
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "model.keras")
    model.save(path)
    restored = tf_keras.models.load_model(path)
    np.testing.assert_allclose(restored(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    saved_model = os.path.join(directory, "saved_model")
    tf.saved_model.save(model, saved_model)
    loaded = tf.saved_model.load(saved_model)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("axis,span", [("width", None), ("height", 5)])
def test_saved_training_call_is_differentiable_like_the_layer(axis, span, tmp_path):
  """The SavedModel holds the attention without its custom gradients (written in a save
  context); autodiff of the loaded function must give the layer's own gradients."""
  shape = [2, 12, 3, 8] if axis == "height" else [2, 3, 12, 8]  # 12 >= 2*5: blocked plan
  x = tf.constant(np.random.default_rng(13).normal(size=shape), tf.float32)
  layer = PositionSensitiveAxialAttention(8, axis, num_heads=2, span=span,
                                          max_global_length=12)
  layer.build(x.shape)
  randomize_and_export(layer, np.random.default_rng(14))
  module = tf.Module()
  module.layer = layer
  module.train_call = tf.function(lambda inputs: layer(inputs, training=True),
                                  input_signature=[tf.TensorSpec(shape, tf.float32)])
  tf.saved_model.save(module, str(tmp_path / "saved"))
  loaded = tf.saved_model.load(str(tmp_path / "saved"))

  def loss_and_gradients(call, variables):
    with tf.GradientTape() as tape:
      tape.watch(x)
      outputs = call(x)
      loss = tf.reduce_sum(outputs * tf.cos(outputs))
    # The outputs, not the loss: a sum of 576 terms that cancel to ~1 differs by a few
    # 1e-5 between float orders (the fused kernel's and the saved TF ops').
    return [outputs] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, [x] + variables)]

  live = loss_and_gradients(lambda inputs: layer(inputs, training=True),
                            [layer.qkv_kernel, layer.relative_embeddings])
  restored = loss_and_gradients(loaded.train_call, [loaded.layer.qkv_kernel,
                                                    loaded.layer.relative_embeddings])
  for name, actual, expected in zip(["outputs", "inputs", "qkv", "table"], restored, live):
    scale = np.max(np.abs(expected.numpy()))
    np.testing.assert_allclose(actual.numpy() / scale, expected.numpy() / scale,
                               atol=1e-5, err_msg=name)


@pytest.mark.parametrize("span,training", [(None, True), (3, True), (3, False)])
def test_gradients_match_numeric(span, training):
  x = tf.constant(np.random.default_rng(11).normal(size=(2, 1, 6, 2)), tf.float64)
  layer = PositionSensitiveAxialAttention(4, "width", num_heads=2, span=span,
                                          max_global_length=6, dtype="float64")
  layer.build(x.shape)
  rng = np.random.default_rng(12)
  # Every weight seeded (the initializers are not), so the case is the same on every run.
  layer.qkv_kernel.assign(rng.normal(0.0, 0.5, layer.qkv_kernel.shape))
  layer.relative_embeddings.assign(rng.normal(0.0, 1.0, layer.relative_embeddings.shape))
  randomize_and_export(layer, rng)

  variable = layer.relative_embeddings

  @tf.function
  def function(inputs, table):
    # Swap the table variable for the argument so that it is differentiated too.
    layer.relative_embeddings = table
    try:
      return layer(inputs, training=training)
    finally:
      layer.relative_embeddings = variable

  # Central differences with step 1e-5 in float64: truncation ~1e-10, rounding ~1e-11.
  theoretical, numerical = tf.test.compute_gradient(
      function, [x, tf.identity(layer.relative_embeddings)], delta=1e-5)
  # Largest deviation over 36 seeded cases: 5e-7 relative.
  for analytic, numeric in zip(theoretical, numerical):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_gradient_flows_to_every_weight():
  x = tf.random.normal([2, 6, 6, 4])
  layer = PositionSensitiveAxialAttention(8, "height", num_heads=2, span=3)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(layer(x, training=True)))
  gradients = [tf.convert_to_tensor(g).numpy()
               for g in tape.gradient(loss, layer.trainable_variables)]
  largest = max(np.max(np.abs(g)) for g in gradients)
  for variable, gradient in zip(layer.trainable_variables, gradients):
    if variable is layer.similarity_batch_norm.beta:
      # beta shifts every logit of a head alike, which the softmax ignores: a gradient
      # exists (the variable stays in the graph) and is zero up to rounding.
      assert np.max(np.abs(gradient)) <= 1e-5 * largest, variable.name
    else:
      assert np.any(gradient != 0), variable.name


@pytest.mark.parametrize("span", [None, 3])
def test_unknown_sizes_and_xla_match_eager(span):
  x = tf.constant(np.random.default_rng(13).normal(size=(2, 9, 7, 8)), tf.float32)
  layer = PositionSensitiveAxialAttention(8, "height", num_heads=2, span=span, strides=2)
  expected = layer(x, training=True).numpy()
  signature = [tf.TensorSpec([None, None, None, 8])]
  dynamic = tf.function(lambda t: layer(t, training=True), input_signature=signature)
  compiled = tf.function(lambda t: layer(t, training=True), jit_compile=True)
  np.testing.assert_allclose(dynamic(x).numpy(), expected, rtol=1e-5, atol=1e-5)
  # XLA reassociates the float reductions of the training-mode batch statistics; over
  # this tiny batch the normalization amplifies that rounding to a few 1e-4 (seen in a
  # full-suite run), so the compiled comparison allows 1e-3.
  np.testing.assert_allclose(compiled(x).numpy(), expected, rtol=1e-3, atol=1e-3)
  # A dynamic axis shorter than the span takes the dense path inside the same graph.
  short = x[:, :4]
  np.testing.assert_allclose(dynamic(short).numpy(), layer(short, training=True).numpy(),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("span", [None, 5])
def test_mixed_precision(span):
  policy = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    layer = PositionSensitiveAxialAttention(8, "width", num_heads=2, span=span)
    x = np.random.default_rng(14).normal(size=(2, 3, 12, 8)).astype(np.float32)
    out = layer(tf.cast(x, tf.float16), training=True)
    assert out.dtype == tf.float16
    assert layer.similarity_batch_norm.moving_mean.dtype == tf.float32
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)
  reference = PositionSensitiveAxialAttention(8, "width", num_heads=2, span=span)
  reference.build(x.shape)
  reference.set_weights(layer.get_weights())
  expected = reference(x, training=True).numpy()
  np.testing.assert_allclose(out.numpy().astype(np.float32), expected, atol=5e-2)


def test_mirrored_strategy_eval_matches_single_device(two_cpu_strategy):
  x = np.random.default_rng(15).normal(size=(4, 5, 6, 8)).astype(np.float32)
  with two_cpu_strategy.scope():
    layer = PositionSensitiveAxialAttention(8, "width", num_heads=2, span=3)
    layer.build(x.shape)
  randomize_and_export(layer, np.random.default_rng(16))
  single = PositionSensitiveAxialAttention(8, "width", num_heads=2, span=3)
  single.build(x.shape)
  single.set_weights(layer.get_weights())
  dataset = two_cpu_strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(x).batch(4))
  result = two_cpu_strategy.run(tf.function(lambda t: layer(t, training=False)),
                                args=(next(iter(dataset)),))
  gathered = np.concatenate([r.numpy() for r in
                             two_cpu_strategy.experimental_local_results(result)])
  np.testing.assert_allclose(gathered, single(x).numpy(), rtol=1e-5, atol=1e-5)


def test_synchronized_batch_norm_uses_global_batch_statistics(two_cpu_strategy):
  x = np.random.default_rng(17).normal(size=(4, 3, 9, 8)).astype(np.float32)
  x[2:] = 2.0 * x[2:] + 1.0  # the two replicas see different statistics
  kwargs = dict(filters=8, axis="width", num_heads=2, span=3)  # blocked path
  with two_cpu_strategy.scope():
    layer = PositionSensitiveAxialAttention(synchronized_batch_norm=True, **kwargs)
    layer.build(x.shape)
  randomize_and_export(layer, np.random.default_rng(18))
  single = PositionSensitiveAxialAttention(**kwargs)
  single.build(x.shape)
  single.set_weights(layer.get_weights())
  dataset = two_cpu_strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(x).batch(4))
  result = two_cpu_strategy.run(tf.function(lambda t: layer(t, training=True)),
                                args=(next(iter(dataset)),))
  gathered = np.concatenate([r.numpy() for r in
                             two_cpu_strategy.experimental_local_results(result)])
  np.testing.assert_allclose(gathered, single(x, training=True).numpy(), rtol=1e-4,
                             atol=1e-4)


@pytest.mark.parametrize("span,expected_length", [(None, 56), (15, 15), (65, 56)])
def test_compute_multiply_adds(span, expected_length):
  layer = PositionSensitiveAxialAttention(64, "height", num_heads=8, span=span)
  positions, channels, key_depth, value_depth = 56 * 56, 64, 32, 64
  expected = (positions * channels * (2 * key_depth + value_depth)
              + positions * expected_length * (3 * key_depth + 2 * value_depth))
  assert layer.compute_multiply_adds([1, 56, 56, 64]) == expected


@pytest.mark.parametrize("paused", [False, True])
def test_output_batch_norm_equals_keras_batch_norm_over_the_interleaved_terms(paused):
  """The two terms, normalized each with its half of the output batch norm, then summed,
  equal tf_keras' fused BatchNormalization over the (channel, term)-interleaved 2 * filters
  channels followed by the sum of each channel's pair: outputs, gradients and moving
  statistics after two training steps (not moved inside a recomputation), then
  inference."""
  from deeplab_axial.layers import recompute  # pylint: disable=import-outside-toplevel
  filters = 8
  layer = PositionSensitiveAxialAttention(filters, "width", num_heads=2,
                                          batch_norm_momentum=0.7)
  layer.build([2, 5, 7, 4])
  rng = np.random.default_rng(5)
  norm = layer.output_batch_norm
  norm.set_weights([rng.uniform(0.5, 2.0, w.shape).astype(np.float32) if i in (0, 3)
                    else rng.normal(size=w.shape).astype(np.float32)
                    for i, w in enumerate(norm.get_weights())])
  reference = tf_keras.layers.BatchNormalization(momentum=0.7, epsilon=norm.epsilon)
  reference.build([None, None, None, 2 * filters])
  reference.set_weights(norm.get_weights())
  content, position = (tf.constant(rng.normal(1.0, 2.0, [2, 5, 7, filters]), tf.float32)
                       for _ in range(2))
  upstream = tf.constant(rng.normal(size=[2, 5, 7, filters]), tf.float32)

  def interleaved_reference(training):
    stacked = tf.reshape(tf.stack([content, position], -1), [2, 5, 7, 2 * filters])
    return tf.reduce_sum(tf.reshape(reference(stacked, training=training),
                                    [2, 5, 7, filters, 2]), -1)

  @tf.function
  def step(training):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([content, position])
      ours = layer._normalized_sum(content, position, training)  # pylint: disable=protected-access
      theirs = interleaved_reference(training)
    sources = [content, position, norm.gamma, norm.beta]
    ours_gradients = tape.gradient(ours, sources, output_gradients=upstream)
    theirs_gradients = tape.gradient(theirs, [content, position, reference.gamma,
                                              reference.beta], output_gradients=upstream)
    return ours, theirs, ours_gradients, theirs_gradients

  initial = norm.get_weights()
  for _ in range(2):
    with recompute.statistics_paused() if paused else contextlib.nullcontext():
      ours, theirs, ours_gradients, theirs_gradients = step(True)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
    for mine, keras in zip(ours_gradients, theirs_gradients):
      np.testing.assert_allclose(mine.numpy(), keras.numpy(), rtol=1e-4, atol=1e-4)
  expected = initial if paused else reference.get_weights()
  assert not np.allclose(initial[2], reference.get_weights()[2])  # the reference moved
  for mine, value in zip(norm.get_weights(), expected):
    np.testing.assert_allclose(mine, value, rtol=1e-5, atol=1e-6)
  reference.set_weights(norm.get_weights())
  ours, theirs, _, _ = step(False)
  np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
