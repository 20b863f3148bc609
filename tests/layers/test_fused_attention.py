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

# sequences, queries, keys, heads, query/key and value depths, bias blocks
_SIZES = dict(n=4, i=5, w=7, h=2, dq=3, dv=3, blocks=2)
_MASKED = -1e9


def _operands(rng, n, i, w, h, dq, dv, blocks):
  """q, k, rq, rk, v, rv, scales and a bias of random values and masked pairs."""
  shapes = [(n, i, h, dq), (n, w, h, dq), (i, w, dq), (i, w, dq), (n, w, h, dv),
            (i, w, dv), (3, h)]
  operands = [rng.normal(size=shape) for shape in shapes]
  bias = rng.normal(size=(blocks, i, w))
  bias[rng.random(size=bias.shape) < 0.3] = _MASKED
  bias[:, :, 0] = 0.0  # every query keeps a key
  return operands + [bias]


def _reference(q, k, rq, rk, v, rv, scales, bias):
  """The kernel's maths in float64 NumPy: (content, position, log-normalizer)."""
  logits = (scales[0][:, None, None] * np.einsum("nihd,nwhd->nhiw", q, k)
            + scales[1][:, None, None] * np.einsum("nihd,iwd->nhiw", q, rq)
            + scales[2][:, None, None] * np.einsum("nwhd,iwd->nhiw", k, rk))
  if len(bias):
    logits = logits + bias[np.arange(len(q)) % len(bias)][:, None]
  shifted = logits - logits.max(-1, keepdims=True)
  normalizer = np.log(np.exp(shifted).sum(-1)) + logits.max(-1)
  weights = np.exp(logits - normalizer[..., None])
  content = np.einsum("nhiw,nwhd->nihd", weights, v)
  position = np.einsum("nhiw,iwd->nihd", weights, rv)
  return content, position, normalizer


def _numeric_gradient(loss, operands, index, step=1e-6):
  """Central differences of the float64 `loss(operands)` with respect to operand `index`."""
  value = operands[index]
  numeric = np.zeros_like(value)
  for position in np.ndindex(value.shape):
    shifted = [x.copy() for x in operands]
    shifted[index][position] += step
    above = loss(shifted)
    shifted[index][position] -= 2 * step
    numeric[position] = (above - loss(shifted)) / (2 * step)
  return numeric


@needs_kernel
def test_kernel_builds_on_this_machine():
  # With a compiler present, a failed build is a bug, not a fallback to hide.
  assert fused_attention.load_library() is not None


@needs_kernel
@pytest.mark.parametrize("sizes", [_SIZES, dict(_SIZES, i=17, w=33, h=1, blocks=0),
                                   dict(_SIZES, n=1, i=1, w=1, blocks=1)])
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
  upstream = [rng.normal(size=(4, 5, 2, 3)) for _ in range(2)]

  def loss(values):
    content, position, _ = _reference(*values)
    return float(np.sum(content * upstream[0]) + np.sum(position * upstream[1]))

  ops = fused_attention.load_library()
  as_float32 = [tf.constant(x, tf.float32) for x in operands]
  _, _, normalizer = ops.deeplab_axial_attention_forward(*as_float32)
  gradients = ops.deeplab_axial_attention_backward(
      *as_float32, normalizer, *[tf.constant(u, tf.float32) for u in upstream])
  assert len(gradients) == len(operands) - 1  # every operand but the bias
  for index, gradient in enumerate(gradients):
    np.testing.assert_allclose(gradient.numpy(), _numeric_gradient(loss, operands, index),
                               rtol=1e-3, atol=1e-4, err_msg=f"operand {index}")


def _band_masks(length=45, radius=4):
  """0/1 [3, length, length] masks of a local span: the band alone, the band with the last
  keys outside the axis, the band with the first keys outside (every query keeps a key).

  Longer than the widest vector (16 lanes), so that the kernels' lane groups of queries
  and of keys see different key and query ranges, and skip the pairs outside them.
  """
  offsets = np.arange(length)[None, :] - np.arange(length)[:, None]
  band = (np.abs(offsets) <= radius).astype(np.float64)
  masks = np.stack([band, band, band])
  masks[1, :, length - 3:] = 0.0
  masks[2, :, :3] = 0.0
  assert masks.sum(-1).min() > 0
  return masks


def _reference_with_tf(q, k, rq, rk, v, rv, scales, bias):
  """`_reference`'s (content, position) in float64 TF ops, for autodiff."""
  logits = (scales[0][:, None, None] * tf.einsum("nihd,nwhd->nhiw", q, k)
            + scales[1][:, None, None] * tf.einsum("nihd,iwd->nhiw", q, rq)
            + scales[2][:, None, None] * tf.einsum("nwhd,iwd->nhiw", k, rk))
  logits += tf.gather(bias, tf.range(tf.shape(q)[0]) % tf.shape(bias)[0])[:, None]
  weights = tf.nn.softmax(logits)
  return (tf.einsum("nhiw,nwhd->nihd", weights, v),
          tf.einsum("nhiw,iwd->nihd", weights, rv))


@needs_kernel
@pytest.mark.parametrize("heads,dq,dv", [(2, 3, 4), (4, 5, 8)])
def test_kernel_skips_band_masked_pairs_without_changing_results(heads, dq, dv):
  """A local span's masks: forward against NumPy, backward against float64 autodiff of
  the same formula. With 4 heads a sequence's q, k and v rows span whole 16-channel
  tiles and a remainder (the kernels gather and scatter every head at once in 16 x 16
  register tiles, and the channels past the last whole tile one by one)."""
  rng = np.random.default_rng(11)
  masks = _band_masks()
  length = masks.shape[-1]
  operands = _operands(rng, n=6, i=length, w=length, h=heads, dq=dq, dv=dv,
                       blocks=3)[:-1]
  operands.append(np.where(masks > 0, 0.1 * rng.normal(size=masks.shape), _MASKED))
  ops = fused_attention.load_library()
  as_float32 = [tf.constant(x, tf.float32) for x in operands]
  content, position, normalizer = ops.deeplab_axial_attention_forward(*as_float32)
  for actual, wanted in zip((content, position, normalizer), _reference(*operands)):
    np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-4, atol=1e-4)

  upstream = [rng.normal(size=content.shape) for _ in range(2)]
  as_float64 = [tf.constant(x, tf.float64) for x in operands]
  with tf.GradientTape() as tape:
    tape.watch(as_float64[:-1])
    outputs = _reference_with_tf(*as_float64)
    loss = sum(tf.reduce_sum(x * u) for x, u in zip(outputs, upstream))
  expected = tape.gradient(loss, as_float64[:-1])
  gradients = ops.deeplab_axial_attention_backward(
      *as_float32, normalizer, *[tf.constant(u, tf.float32) for u in upstream])
  for index, (gradient, wanted) in enumerate(zip(gradients, expected)):
    scale = np.max(np.abs(wanted.numpy()))
    np.testing.assert_allclose(gradient.numpy() / scale, wanted.numpy() / scale, atol=1e-5,
                               err_msg=f"operand {index}")


@needs_kernel
@pytest.mark.parametrize("index,change", [(2, lambda t: t[:, :-1]),   # rq: a key short
                                          (6, lambda t: t[:, :1]),    # scales: one head
                                          (7, lambda t: tf.concat([t, t[:1]], 0))])  # 3 blocks
def test_kernel_rejects_disagreeing_shapes(index, change):
  operands = [tf.constant(x, tf.float32)
              for x in _operands(np.random.default_rng(2), **_SIZES)]
  operands[index] = change(operands[index])
  with pytest.raises(tf.errors.InvalidArgumentError, match="operand shapes disagree"):
    fused_attention.load_library().deeplab_axial_attention_forward(*operands)


def _statistics_operands(rng, s=3, j=2, i=9, w=11, h=2, d=3):
  q, k = rng.normal(size=(s, j, i, h, d)), rng.normal(size=(s, j, w, h, d))
  r_q, r_k = rng.normal(size=(i, w, d)), rng.normal(size=(i, w, d))
  weights = (rng.uniform(size=(j, i, w)) < 0.7).astype(np.float64)
  return q, k, r_q, r_k, weights


def _per_pair_statistics(q, k, r_q, r_k, weights, with_content):
  """Sums and squared sums [terms, heads] of the terms over the weighted pairs (NumPy)."""
  terms = [np.einsum("sjihd,iwd->sjhiw", q, r_q), np.einsum("sjwhd,iwd->sjhiw", k, r_k)]
  if with_content:
    terms.insert(0, np.einsum("sjihd,sjwhd->sjhiw", q, k))
  mask = weights[None, :, None]
  return (np.stack([(t * mask).sum((0, 1, 3, 4)) for t in terms]),
          np.stack([(t * t * mask).sum((0, 1, 3, 4)) for t in terms]))


def _table_operands(r_q, r_k, weights):
  """The kernel's table inputs: each query's (key's) table summed over its pairs."""
  return (np.einsum("jiw,iwd->jid", weights, r_q),
          np.einsum("jiw,iwd,iwe->jide", weights, r_q, r_q),
          np.einsum("jiw,iwd->jwd", weights, r_k),
          np.einsum("jiw,iwd,iwe->jwde", weights, r_k, r_k))


# (heads, depth): 4 x 5 spans a 16-channel register tile and a remainder (the kernels
# gather every head of a sequence at once); depth 32, whole vectors at every vector
# width, takes the content Grams' depth-last path (its numeric gradient, ~6 s, is slow).
_STATISTICS_HEADS = [(2, 3), (4, 5)]
_WHOLE_VECTORS = (2, 32)


@needs_kernel
@pytest.mark.parametrize("with_content", [False, True])
@pytest.mark.parametrize("heads,depth", _STATISTICS_HEADS + [_WHOLE_VECTORS])
def test_statistics_kernel_matches_per_pair_sums(with_content, heads, depth):
  q, k, r_q, r_k, weights = _statistics_operands(np.random.default_rng(6), i=17, h=heads,
                                                 d=depth)
  if with_content:
    weights = np.ones_like(weights)  # the content Grams need every pair valid
  totals, squares = fused_attention.gram_statistics(
      *[tf.constant(x, tf.float32) for x in (q, k) + _table_operands(r_q, r_k, weights)],
      with_content=with_content)
  expected_totals, expected_squares = _per_pair_statistics(q, k, r_q, r_k, weights,
                                                           with_content)
  np.testing.assert_allclose(totals.numpy(), expected_totals, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(squares.numpy(), expected_squares, rtol=1e-4, atol=1e-3)


@needs_kernel
@pytest.mark.parametrize("with_content", [False, True])
@pytest.mark.parametrize(
    "heads,depth",
    _STATISTICS_HEADS + [pytest.param(*_WHOLE_VECTORS, marks=pytest.mark.slow)])
def test_statistics_kernel_gradient_matches_numeric_gradient(with_content, heads, depth):
  rng = np.random.default_rng(7)
  q, k, r_q, r_k, weights = _statistics_operands(rng, s=2, j=2, i=4, w=5, h=heads,
                                                 d=depth)
  tables = _table_operands(r_q, r_k, weights)
  # Non-symmetric Grams: the kernel's gradient must hold for any table input.
  tables = (tables[0], tables[1] + rng.normal(size=tables[1].shape), tables[2],
            tables[3] + rng.normal(size=tables[3].shape))
  terms = 3 if with_content else 2
  upstream = rng.normal(size=(2, terms, heads))

  def loss(values):
    q, k, q_sum, q_gram, k_sum, k_gram = values
    totals = [np.einsum("sjihd,jid->h", q, q_sum), np.einsum("sjwhd,jwd->h", k, k_sum)]
    squares = [np.einsum("sjihd,jide,sjihe->h", q, q_gram, q),
               np.einsum("sjwhd,jwde,sjwhe->h", k, k_gram, k)]
    if with_content:  # per pair, as the statistics define it
      content = np.einsum("sjihd,sjwhd->sjhiw", q, k)
      totals.insert(0, content.sum((0, 1, 3, 4)))
      squares.insert(0, (content ** 2).sum((0, 1, 3, 4)))
    return float(np.sum(np.stack(totals) * upstream[0])
                 + np.sum(np.stack(squares) * upstream[1]))

  operands = [q, k] + list(tables)
  as_float32 = [tf.constant(x, tf.float32) for x in operands]
  with tf.GradientTape() as tape:
    tape.watch(as_float32)
    totals, squares = fused_attention.gram_statistics(*as_float32, with_content=with_content)
    weighted = (tf.reduce_sum(totals * upstream[0].astype(np.float32))
                + tf.reduce_sum(squares * upstream[1].astype(np.float32)))
  gradients = tape.gradient(weighted, as_float32)
  for index, gradient in enumerate(gradients):
    np.testing.assert_allclose(gradient.numpy(), _numeric_gradient(loss, operands, index),
                               rtol=1e-3, atol=1e-3, err_msg=f"operand {index}")


@needs_kernel
def test_masked_content_kernel_matches_per_pair_sums_and_numeric_gradient():
  rng = np.random.default_rng(10)
  q, k, _, _, weights = _statistics_operands(rng, s=2, j=3, i=5, w=18, h=2, d=3)
  upstream = rng.normal(size=(2, 2))

  def per_pair(q, k):
    term = np.einsum("sjihd,sjwhd->sjhiw", q, k)
    mask = weights[None, :, None]
    return (term * mask).sum((0, 1, 3, 4)), (term * term * mask).sum((0, 1, 3, 4))

  as_float32 = [tf.constant(x, tf.float32) for x in (q, k)]
  with tf.GradientTape() as tape:
    tape.watch(as_float32)
    total, square = fused_attention.masked_content_statistics(
        *as_float32, tf.constant(weights, tf.float32))
    weighted = (tf.reduce_sum(total * upstream[0].astype(np.float32))
                + tf.reduce_sum(square * upstream[1].astype(np.float32)))
  expected_total, expected_square = per_pair(q, k)
  np.testing.assert_allclose(total.numpy(), expected_total, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(square.numpy(), expected_square, rtol=1e-4, atol=1e-3)

  def loss(values):
    total, square = per_pair(*values)
    return float(np.sum(total * upstream[0]) + np.sum(square * upstream[1]))

  for index, gradient in enumerate(tape.gradient(weighted, as_float32)):
    np.testing.assert_allclose(gradient.numpy(), _numeric_gradient(loss, [q, k], index),
                               rtol=1e-3, atol=1e-3, err_msg=f"operand {index}")


@needs_kernel
def test_masked_content_kernel_skips_band_masked_pairs_without_changing_results():
  rng = np.random.default_rng(12)
  weights = _band_masks()
  length = weights.shape[-1]
  q = rng.normal(size=(2, 3, length, 2, 3))
  k = rng.normal(size=(2, 3, length, 2, 3))
  upstream = rng.normal(size=(2, 2))
  as_float64 = [tf.constant(x, tf.float64) for x in (q, k)]
  with tf.GradientTape() as tape:
    tape.watch(as_float64)
    term = tf.einsum("sjihd,sjwhd->sjhiw", *as_float64)
    mask = tf.constant(weights[None, :, None])
    expected = (tf.reduce_sum(term * mask, (0, 1, 3, 4)),
                tf.reduce_sum(term * term * mask, (0, 1, 3, 4)))
    loss = sum(tf.reduce_sum(x * u) for x, u in zip(expected, upstream))
  expected_gradients = tape.gradient(loss, as_float64)

  as_float32 = [tf.constant(x, tf.float32) for x in (q, k)]
  with tf.GradientTape() as tape:
    tape.watch(as_float32)
    actual = fused_attention.masked_content_statistics(*as_float32,
                                                       tf.constant(weights, tf.float32))
    loss = sum(tf.reduce_sum(x * u.astype(np.float32)) for x, u in zip(actual, upstream))
  for value, wanted in zip(actual, expected):
    np.testing.assert_allclose(value.numpy(), wanted.numpy(), rtol=1e-4, atol=1e-3)
  for index, (gradient, wanted) in enumerate(zip(tape.gradient(loss, as_float32),
                                                 expected_gradients)):
    scale = np.max(np.abs(wanted.numpy()))
    np.testing.assert_allclose(gradient.numpy() / scale, wanted.numpy() / scale, atol=1e-5,
                               err_msg=f"operand {index}")


@needs_kernel
def test_statistics_kernel_rejects_disagreeing_shapes():
  q, k, r_q, r_k, weights = _statistics_operands(np.random.default_rng(8))
  tables = list(_table_operands(r_q, r_k, weights))
  tables[1] = tables[1][:, :-1]  # query Gram with one position too few
  with pytest.raises(tf.errors.InvalidArgumentError, match="operand shapes disagree"):
    fused_attention.gram_statistics(*[tf.constant(x, tf.float32) for x in [q, k] + tables],
                                    with_content=False)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"valid \[J, I, W\]"):
    fused_attention.masked_content_statistics(
        tf.constant(q, tf.float32), tf.constant(k, tf.float32),
        tf.constant(weights[:, :, :-1], tf.float32))  # one key too few


@needs_kernel
def test_statistics_kernel_is_deterministic():
  q, k, r_q, r_k, weights = _statistics_operands(np.random.default_rng(9), s=64, j=3,
                                                 i=20, w=40, h=4, d=8)
  operands = [tf.constant(x, tf.float32) for x in (q, k) + _table_operands(r_q, r_k,
                                                                           weights)]

  def run():
    with tf.GradientTape() as tape:
      tape.watch(operands)
      totals, squares = fused_attention.gram_statistics(*operands, with_content=False)
      loss = tf.reduce_sum(totals) + tf.reduce_sum(tf.sin(squares))
    return [totals, squares] + tape.gradient(loss, operands)

  for first, second in zip(run(), run()):
    np.testing.assert_array_equal(first.numpy(), second.numpy())
  masked = [fused_attention.masked_content_statistics(
      operands[0], operands[1], tf.constant(weights, tf.float32)) for _ in range(2)]
  for first, second in zip(*masked):
    np.testing.assert_array_equal(first.numpy(), second.numpy())


def _batch_norm_reference(x, gamma, beta, epsilon):
  """Training-mode batch norm of x [..., C] per channel in float64 NumPy, from its
  definition: (normalized x, batch mean, biased batch variance)."""
  rows = x.reshape(-1, x.shape[-1])
  mean = rows.mean(0)
  variance = ((rows - mean) ** 2).mean(0)
  return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta, mean, variance


_EPSILON = 1e-3


def _split_reference(x, gamma, beta, depths):
  """`batch_norm_split` in NumPy: (parts, mean, variance) of x [..., H, D]."""
  heads, depth = x.shape[-2:]
  normalized, mean, variance = _batch_norm_reference(
      x.reshape(x.shape[:-2] + (heads * depth,)), gamma, beta, _EPSILON)
  normalized = normalized.reshape(x.shape)
  parts = np.split(normalized, np.cumsum(depths)[:-1], axis=-1)
  return parts, mean, variance


def _sum_reference(terms, gamma, beta):
  """`normalized_sum` in NumPy: (sum, means [T, C], variances [T, C])."""
  results = [_batch_norm_reference(term, g, b, _EPSILON)
             for term, g, b in zip(terms, gamma, beta)]
  return (sum(normalized for normalized, _, _ in results),
          np.stack([mean for _, mean, _ in results]),
          np.stack([variance for _, _, variance in results]))


def _assert_numeric_gradients(gradients, loss, operands, atol, step=1e-6):
  """Each of `gradients` equals the numeric gradient of the float64 `loss(operands)`,
  within `atol` of the largest entry of the numeric one."""
  for index, gradient in enumerate(gradients):
    numeric = _numeric_gradient(loss, operands, index, step=step)
    scale = np.max(np.abs(numeric))
    np.testing.assert_allclose(gradient.numpy() / scale, numeric / scale, atol=atol,
                               err_msg=f"operand {index}")


@needs_kernel
@pytest.mark.parametrize("shape,depths", [((3, 5, 4, 7), (2, 2, 3)),
                                          ((2, 3, 6, 1, 20), (5, 5, 10)),
                                          ((70, 2, 8), (8,))])
def test_batch_norm_split_matches_numpy_and_numeric_gradient(shape, depths):
  rng = np.random.default_rng(10)
  channels = shape[-2] * shape[-1]
  # A mean far from zero next to the spread: one-pass sums of x and x^2 in float32 lose
  # the variance to cancellation here.
  x = rng.normal(size=shape) * 0.5 + 300.0
  gamma, beta = rng.normal(size=channels), rng.normal(size=channels)
  upstream = [rng.normal(size=shape[:-1] + (d,)) for d in depths]
  as_float32 = [tf.constant(v, tf.float32) for v in (x, gamma, beta)]
  with tf.GradientTape() as tape:
    tape.watch(as_float32)
    parts, mean, variance = fused_attention.batch_norm_split(*as_float32, depths, _EPSILON)
    loss = sum(tf.reduce_sum(p * u.astype(np.float32)) for p, u in zip(parts, upstream))
  wanted_parts, wanted_mean, wanted_variance = _split_reference(x, gamma, beta, depths)
  for part, wanted in zip(parts, wanted_parts):
    np.testing.assert_allclose(part.numpy(), wanted, rtol=1e-3, atol=2e-3)
  np.testing.assert_allclose(mean.numpy(), wanted_mean, rtol=1e-6)
  np.testing.assert_allclose(variance.numpy(), wanted_variance, rtol=2e-3)

  def reference_loss(values):
    reference_parts = _split_reference(*values, depths)[0]
    return float(sum(np.sum(p * u) for p, u in zip(reference_parts, upstream)))

  _assert_numeric_gradients(tape.gradient(loss, as_float32), reference_loss,
                            [x, gamma, beta], atol=2e-3, step=1e-4)


@needs_kernel
def test_normalized_sum_matches_numpy_and_numeric_gradient():
  rng = np.random.default_rng(11)
  terms = [rng.normal(size=(4, 3, 5, 18)) * scale + shift
           for scale, shift in ((1.0, 0.0), (0.2, -50.0), (3.0, 2.0))]
  gamma, beta = rng.normal(size=(3, 18)), rng.normal(size=(3, 18))
  upstream = rng.normal(size=terms[0].shape)
  as_float32 = [tf.constant(v, tf.float32) for v in terms + [gamma, beta]]
  with tf.GradientTape() as tape:
    tape.watch(as_float32)
    total, mean, variance = fused_attention.normalized_sum(as_float32[:3], *as_float32[3:],
                                                           _EPSILON)
    loss = tf.reduce_sum(total * upstream.astype(np.float32))
  wanted_total, wanted_mean, wanted_variance = _sum_reference(terms, gamma, beta)
  np.testing.assert_allclose(total.numpy(), wanted_total, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mean.numpy(), wanted_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(variance.numpy(), wanted_variance, rtol=1e-4)

  def reference_loss(values):
    return float(np.sum(_sum_reference(values[:3], *values[3:])[0] * upstream))

  _assert_numeric_gradients(tape.gradient(loss, as_float32), reference_loss,
                            terms + [gamma, beta], atol=1e-4)


@needs_kernel
def test_batch_norm_kernels_swap_rows_as_a_transpose_would():
  rng = np.random.default_rng(14)
  x = tf.constant(rng.normal(size=(2, 5, 3, 2, 6)), tf.float32)  # [outer, A, B, H, D]
  gamma, beta = (tf.constant(rng.normal(size=12), tf.float32) for _ in range(2))
  terms = [tf.constant(rng.normal(size=(2, 3, 5, 8)), tf.float32) for _ in range(2)]
  gammas, betas = (tf.constant(rng.normal(size=(2, 8)), tf.float32) for _ in range(2))
  part_upstream = [tf.constant(rng.normal(size=(2, 3, 5, 2, d)), tf.float32)
                   for d in (2, 4)]
  sum_upstream = tf.constant(rng.normal(size=(2, 5, 3, 8)), tf.float32)

  def run(swap):
    def moved(tensor):  # what swap_rows does to the rows
      return tensor if swap else tf.transpose(tensor, [0, 2, 1] + list(
          range(3, tensor.shape.rank)))

    with tf.GradientTape() as tape:
      tape.watch([x, gamma, beta] + terms + [gammas, betas])
      parts, _, _ = fused_attention.batch_norm_split(x, gamma, beta, [2, 4], _EPSILON,
                                                     swap_rows=swap)
      parts = [moved(part) for part in parts]
      total = moved(fused_attention.normalized_sum(terms, gammas, betas, _EPSILON,
                                                   swap_rows=swap)[0])
      loss = (sum(tf.reduce_sum(p * u) for p, u in zip(parts, part_upstream))
              + tf.reduce_sum(total * sum_upstream))
    return parts + [total] + tape.gradient(loss, [x, gamma, beta] + terms
                                           + [gammas, betas])

  assert [t.shape for t in run(True)[:3]] == [(2, 3, 5, 2, 2), (2, 3, 5, 2, 4),
                                              (2, 5, 3, 8)]
  for index, (swapped, transposed) in enumerate(zip(run(True), run(False))):
    np.testing.assert_allclose(swapped.numpy(), transposed.numpy(), rtol=1e-6, atol=1e-6,
                               err_msg=f"result {index}")


@needs_kernel
def test_batch_norm_kernels_reject_disagreeing_shapes_and_are_deterministic():
  x = tf.random.stateless_normal([300, 4, 6], seed=[1, 2])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"x must be \[\.\.\., heads, 7\]"):
    fused_attention.batch_norm_split(x, tf.ones([24]), tf.zeros([24]), [3, 4], _EPSILON)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"input 1 must be \[24\]"):
    fused_attention.batch_norm_split(x, tf.ones([6]), tf.zeros([24]), [2, 4], _EPSILON)
  with pytest.raises(tf.errors.InvalidArgumentError, match="every term must have shape"):
    fused_attention.normalized_sum([x, x[:, :2]], tf.ones([2, 6]), tf.zeros([2, 6]),
                                   _EPSILON)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"gamma must be \[2,6\]"):
    fused_attention.normalized_sum([x, x], tf.ones([6]), tf.zeros([2, 6]), _EPSILON)

  def run():
    with tf.GradientTape() as tape:
      tape.watch(x)
      parts, mean, variance = fused_attention.batch_norm_split(
          x, tf.ones([24]), tf.zeros([24]), [2, 4], _EPSILON)
      values = tf.reshape(parts[1], [300, 16])
      total, means, variances = fused_attention.normalized_sum(
          [values, values * 2.0], tf.ones([2, 16]), tf.zeros([2, 16]), _EPSILON)
      loss = tf.reduce_sum(tf.sin(total)) + tf.reduce_sum(parts[0] ** 3)
    return [*parts, mean, variance, total, means, variances, tape.gradient(loss, x)]

  for first, second in zip(run(), run()):
    np.testing.assert_array_equal(first.numpy(), second.numpy())


# (axis, height, width, heads, filters, span, strides, use_batch_norm)
_LAYER_CASES = [
    ("width", 3, 9, 2, 16, None, 1, True),     # global (dense, no mask)
    ("height", 8, 3, 2, 16, None, 2, True),    # global, strided
    ("width", 2, 9, 2, 16, 7, 1, True),        # dense plan with the band mask
    ("height", 23, 2, 2, 16, 5, 1, True),      # blocked plan (key mask, band)
    ("width", 2, 40, 4, 32, 7, 2, True),       # blocked, several blocks, strided
    ("height", 40, 2, 2, 16, 17, 1, True),     # blocked, 8 queries per block
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
  assert ("DeeplabAxialGramStatistics" in fused_ops) == batch_norm
  assert ("DeeplabAxialGramStatisticsGrad" in fused_ops) == batch_norm
  masked = batch_norm and span is not None  # every masked case here has out-of-band pairs
  assert ("DeeplabAxialMaskedContentStatistics" in fused_ops) == masked
  assert ("DeeplabAxialMaskedContentStatisticsGrad" in fused_ops) == masked
  assert ("DeeplabAxialBatchNormSplit" in fused_ops) == batch_norm
  assert ("DeeplabAxialBatchNormSplitGrad" in fused_ops) == batch_norm
  assert ("DeeplabAxialNormalizedSum" in fused_ops) == batch_norm
  assert ("DeeplabAxialNormalizedSumGrad" in fused_ops) == batch_norm
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
