"""Position-sensitive axial attention (Axial-DeepLab, Wang et al., ECCV 2020, Eq. 3/4).

One layer attends along one spatial axis ("height" or "width") of an NHWC feature map:

  y_o = sum_p softmax_p(q_o.k_p + q_o.r^q_{p-o} + k_p.r^k_{p-o}) (v_p + r^v_{p-o})

where p runs over the span of o along the axis. Each head has its own q/k/v projection;
the relative tables r^q, r^k, r^v are shared by all heads of the layer (AD §3.1), as in
the official PyTorch code, which stores one `[2 * per_head_value_depth, 2k - 1]` table.

Span
----
* `span=None` (global): every position attends to the whole axis. The tables have
  `2 * max_global_length - 1` rows (relative offsets -(n-1)..n-1), so any axis of length
  <= `max_global_length` works with the same weights; a longer axis raises a ValueError
  (or fails a runtime assertion when the length is only known at run time). Setting
  `max_global_length=k` for a feature length `k` gives exactly the official layer
  (table of 2k-1 offsets, same parameter count as csrhddlam's `kernel_size=k`).
* `span=m` (odd): each position attends to the m positions centred on it, offsets
  -(m-1)/2..(m-1)/2, so the tables have m rows. Keys outside the axis (the "zero padding"
  at the borders) are excluded from the softmax. When the axis has at least 2m
  positions the computation is blocked: the axis is split into blocks of
  b = max((m-1)/2, 1) queries, each block attends to a window of 3b keys (its own block
  and one on each side), and the relative table is gathered once into a `[b, 3b]`
  matrix shared by all blocks, so time and memory are O(length * m) (larger blocks
  measured slower for span 15). A shorter axis uses the dense length x length map with
  the band mask, which is O(length * m) too since length < 2m, and faster there; both
  give identical results. The similarity BN is an affine map per (term, head), so its
  scales are folded into q and k before the einsums, in training (batch statistics from
  sums over small Gram matrices, see `_similarity_sums`) as in inference (moving
  statistics; the per-head offset, which the softmax ignores, is dropped there). On the
  TF-op path the offset and the masks enter as extra depth channels of the einsums
  (e.g. q: 1, r^q: 0 or a large negative logit) instead of an add or select on the
  full logits; the fused CPU kernel takes the scales and a per-pair logit bias as
  operands.

Batch normalization (the official recipe; `use_batch_norm=False` removes all three)
---------------------------------------------------------------------------------------
* on the qkv projection, per channel;
* on each of the similarity terms qk, qr, kr, one gamma/beta/moving statistic per
  (term, head). Statistics are taken over the *valid* (query, key) pairs only: pairs
  inside the band |p - o| <= (m-1)/2 with both positions inside the axis. For the global
  span every pair is valid, so the statistics are exactly the official ones (batch x
  length x length per (term, head)); the masked entries of the blocked layout never
  enter the statistics. Moving statistics use the Keras convention
  (moving = momentum * moving + (1 - momentum) * batch, batch variance biased,
  computed as E[x^2] - E[x]^2).
* on the two output terms (retrieved content sv and retrieved value position sve), one
  gamma/beta per (channel, term), statistics over batch x positions.

Implementation: float32 training on a CPU runs the attention core (logits, softmax, both
retrievals and their gradients) and the similarity statistics on the C++ kernels of
`fused_attention`; inference, exports, XLA, GPUs and float16/bfloat16 run the TF ops
below (`_attend_with_tf_ops`, `_gram_statistics_with_tf_ops`; the statistics, float32 in
every policy, use the kernel under mixed precision too). Both compute the same maths.

Strides: `strides=s` average-pools the output along the layer's axis after the attention
(window s, stride s). The output length is ceil(length / s), like a strided convolution, so
a block's projection shortcut always has the same size; a last, partial window averages
the positions it holds. For lengths divisible by s this is exactly PyTorch's
`AvgPool2d(s, s)`. `AxialAttention2D` can instead pool both axes after the width layer,
which is what the official PyTorch code does (see `axial_blocks.py`).

Variable layout (matches the official PyTorch AxialAttention so weights port by reshape):
* `qkv_kernel` `[in_channels, num_heads * (2 * dq + dv)]`, channels head-major and, inside
  each head, `[q (dq), k (dq), v (dv)]` (PT `qkv_transform.weight[:, :, 0].T`);
* `qkv_batch_norm` (Keras BatchNormalization over those channels; PT `bn_qkv`);
* `relative_embeddings` `[rows, 2 * dq + dv]`, row = (p - o) + (rows - 1) / 2, columns
  `[r^q, r^k, r^v]`. PT indexes q and v by o - p and k by p - o, so
  `ours = concat([pt[:dq, ::-1].T, pt[dq:2dq].T, pt[2dq:, ::-1].T], axis=1)`;
* `similarity_batch_norm` gamma/beta/moving_mean/moving_variance `[3, num_heads]`,
  terms ordered (qk, qr, kr) (PT `bn_similarity` reshaped to [3, groups]);
* `output_batch_norm` over `2 * filters` channels ordered (channel, term) with term
  fastest, terms (sv, sve) (identical to PT `bn_output`).
"""
import math

import tensorflow as tf
import tf_keras

from deeplab_axial.layers import fused_attention
from deeplab_axial.layers import graph_code
from deeplab_axial.layers import recompute
from deeplab_axial.layers import validation

_AXES = ("height", "width")
# Logit given to masked (out-of-band or out-of-axis) pairs; finite so that a fully
# masked row (a padding query, cropped later) gives no NaN.
_MASKED_LOGIT = -1e9
DEFAULT_MAX_GLOBAL_LENGTH = 129


def average_pool(inputs, pool_size):
  """Average pool with window = stride = pool_size, output ceil(size / pool).

  A partial last window averages only the positions inside the input (no zeros), so for
  sizes divisible by the pool this is PyTorch's AvgPool2d(pool, pool).

  Args:
    inputs: `[batch, height, width, channels]`.
    pool_size: (pool_height, pool_width) positive ints.

  Returns:
    `[batch, ceil(height / pool_height), ceil(width / pool_width), channels]`.
  """
  if tuple(pool_size) == (1, 1):
    return inputs
  shape = tf.shape(inputs)
  pad = [[0, 0], [0, (-shape[1]) % pool_size[0]], [0, (-shape[2]) % pool_size[1]], [0, 0]]
  pooled = tf.nn.avg_pool2d(tf.pad(inputs, pad), pool_size, pool_size, "VALID")
  ones = tf.pad(tf.ones([1, shape[1], shape[2], 1], inputs.dtype), pad)
  coverage = tf.nn.avg_pool2d(ones, pool_size, pool_size, "VALID")
  return pooled / coverage


def _resolve_training(training):
  """Returns a Python bool or a boolean tensor (None means inference)."""
  if training is None:
    return False
  if isinstance(training, (bool, int)):
    return bool(training)
  return training


def _smart_cond(pred, true_fn, false_fn):
  if isinstance(pred, bool):
    return true_fn() if pred else false_fn()
  return tf.cond(pred, true_fn, false_fn)


def _replica_sum(value):
  """Sums `value` over the replicas of the current tf.distribute replica context."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return value
  return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class SimilarityBatchNormalization(tf_keras.layers.Layer):
  """Batch norm of the three similarity terms, one gamma/beta per (term, head), summed.

  The normalized sum of the terms x_t (qk, qr, kr) is an affine map per (term, head),
  sum_t scale_t * x_t + offset, with scale = gamma / sqrt(variance + epsilon) and
  offset = sum_t (beta_t - mean_t * scale_t). This layer holds the variables and turns
  statistics into that map (`scale_and_offset`); the attention layer applies it by
  scaling q and k before its einsums, so the normalized terms are never materialised.
  Statistics are over the valid (query, key) pairs of every sequence, per (term, head),
  biased variance; the caller provides their sums (`_similarity_sums`).
  Inside `recompute.statistics_paused()` training uses the batch statistics but leaves
  the moving ones alone (a recomputed backward pass, `deeplab_axial.layers.recompute`).
  """

  pauses_in_recomputation = True

  def __init__(self, num_heads, momentum=0.9, epsilon=1e-5, synchronized=False,
               **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.momentum = momentum
    self.epsilon = epsilon
    self.synchronized = synchronized

  def build(self, input_shape):
    shape = (3, self.num_heads)
    self.gamma = self.add_weight("gamma", shape, initializer="ones",
                                 experimental_autocast=False)
    self.beta = self.add_weight("beta", shape, initializer="zeros",
                                experimental_autocast=False)
    moving = dict(trainable=False, experimental_autocast=False,
                  synchronization=tf.VariableSynchronization.ON_READ,
                  aggregation=tf.VariableAggregation.MEAN)
    self.moving_mean = self.add_weight("moving_mean", shape, initializer="zeros", **moving)
    self.moving_variance = self.add_weight("moving_variance", shape, initializer="ones",
                                           **moving)
    super().build(input_shape)

  def _batch_statistics(self, sums):
    """Mean and biased variance [3, heads] from (sums, squared sums, count)."""
    total, squares, count = sums
    if self.synchronized:
      # One all-reduce of every sum this replica holds.
      packed = _replica_sum(tf.concat([tf.reshape(total, [-1]), tf.reshape(squares, [-1]),
                                       tf.reshape(count, [1])], 0))
      size = 3 * self.num_heads
      total = tf.reshape(packed[:size], [3, self.num_heads])
      squares = tf.reshape(packed[size:2 * size], [3, self.num_heads])
      count = packed[-1]
    mean = total / count
    # E[x^2] - E[x]^2 >= 0 up to rounding, which must not reach the square root.
    variance = tf.maximum(squares / count - tf.square(mean), 0.0)
    if recompute.statistics_updates_paused():
      return mean, variance
    self.moving_mean.assign(self.momentum * self.moving_mean + (1.0 - self.momentum) * mean)
    self.moving_variance.assign(self.momentum * self.moving_variance
                                + (1.0 - self.momentum) * variance)
    return mean, variance

  def scale_and_offset(self, sums, training):
    """The per-(term, head) scale and per-head offset of the normalized sum.

    Args:
      sums: callable returning (sums [3, heads], squared sums [3, heads], pair count)
        of the similarity terms over this replica's valid pairs, in the variable dtype;
        called only in training mode.
      training: Python bool or boolean tensor.

    Returns:
      (scale [3, heads], offset [heads]) in the variable dtype. The offset is None in
      inference (a per-head constant does not change the softmax over keys, and nothing
      is differentiated there); in training it is kept so that beta stays in the graph.
    """
    def batch():
      mean, variance = self._batch_statistics(sums())
      return mean, variance

    def moving():
      return tf.identity(self.moving_mean), tf.identity(self.moving_variance)

    if training is False:
      mean, variance = moving()
    else:
      mean, variance = _smart_cond(training, batch, moving)
    scale = self.gamma * tf.math.rsqrt(variance + self.epsilon)
    if training is False:
      return scale, None
    return scale, tf.reduce_sum(self.beta - mean * scale, axis=0)

  def get_config(self):
    config = super().get_config()
    config.update(num_heads=self.num_heads, momentum=self.momentum, epsilon=self.epsilon,
                  synchronized=self.synchronized)
    return config


def _masked_content_sums(q, k, valid, dtype, fused):
  """(sum, squared sum) `[heads]` of the qk term over the pairs where `valid` is 1.

  Args:
    q: `[sequences, blocks, queries, heads, depth]`.
    k: `[sequences, blocks, keys, heads, depth]`.
    valid: 0/1 `[blocks, 1, queries, keys]` in `dtype` (no gradient).
    dtype: the dtype of the term and of the sums (the variable dtype).
    fused: Python bool, whether the sums run on the CPU kernel
      (`fused_attention.masked_content_statistics`, float32), which keeps each
      (sequence, head)'s terms in cache instead of materialising them.

  The term qk `[sequences, blocks, heads, queries, keys]` is full-size, so the backward
  pass computes it again from q and k (kept anyway) instead of keeping it: measured, it
  was a fifth of Axial-ResNet-S's training-step peak at 513² (span 65). Its gradient,
  valid * (d_sum + 2 * d_squares * term), is one expression instead of autodiff's
  broadcasts of the masked products, and the reductions run over contiguous axes (a
  reduction over axes (0, 1, 3, 4) of the 5-D layout is several times slower).
  """
  if fused:
    return fused_attention.masked_content_statistics(tf.cast(q, dtype), tf.cast(k, dtype),
                                                     valid[:, 0])

  def content_term(q, k):
    return tf.cast(tf.einsum("sjihd,sjwhd->sjhiw", q, k, name="content_statistics"), dtype)

  @fused_attention.custom_gradient_unless_saving
  def sums(q, k):
    masked = content_term(q, k) * valid
    shape = tf.unstack(tf.shape(masked), num=5)
    rows = tf.reshape(masked, [shape[0] * shape[1], shape[2], shape[3] * shape[4]])
    total = tf.reduce_sum(tf.reduce_sum(rows, axis=2), axis=0)
    squares = tf.reduce_sum(tf.reduce_sum(tf.square(rows), axis=2), axis=0)

    def gradient(d_total, d_squares):
      # The dependency keeps the executor from recomputing the term (and holding it)
      # before the backward pass reaches this point.
      with tf.control_dependencies([d_total, d_squares]):
        term = content_term(q, k)
      d_term = tf.cast(valid * (d_total[:, None, None] + 2.0 * d_squares[:, None, None]
                                * term), q.dtype)
      return (tf.einsum("sjhiw,sjwhd->sjihd", d_term, k),
              tf.einsum("sjhiw,sjihd->sjwhd", d_term, q))

    return (total, squares), gradient

  return sums(q, k)


def _heads_first(x):
  """`[s, blocks, positions, heads, d]` <-> `[s, blocks, heads, positions, d]`.

  The full-size products run as batched matmuls over (s, blocks, heads) on operands
  transposed here (small: positions x depth): at 56², batch 4, einsum of the same
  contraction took 1.2-1.3x the forward + backward time (it transposed its result and,
  in the gradient, took a slower contraction order).
  """
  return tf.transpose(x, [0, 1, 3, 2, 4])


def _relative_logits(x, table, by_key):
  """x . table per pair: `[s, blocks, heads, queries, keys]` logits of a relative term.

  qr (by_key False): x = q `[s, blocks, queries, heads, d]`, out[s,j,h,i,w] =
  q[s,j,i,h] . table[i,w]; kr (by_key True): x = k `[s, blocks, keys, heads, d]`,
  out[s,j,h,i,w] = k[s,j,w,h] . table[i,w]. `table` is `[queries, keys, d]`.

  One batched matmul over the position axis that x and the table share (queries for
  qr, keys for kr). Its own gradient transposes the incoming gradient once for both
  the x and the table gradients; einsum's autodiff transposed it separately for each
  (the kr backward was ~30% of a span-65 layer's training step at 129², measured).
  """
  shape = tf.unstack(tf.shape(x), num=5)  # one op, not a slice per use
  # Logits axes with the shared position axis first: [B, s, j, h, other].
  to_batch = [4, 0, 1, 2, 3] if by_key else [3, 0, 1, 2, 4]
  from_batch = [1, 2, 3, 4, 0] if by_key else [1, 2, 3, 0, 4]
  x_rows = tf.reshape(tf.transpose(x, [2, 0, 1, 3, 4]),
                      [shape[2], shape[0] * shape[1] * shape[3], shape[4]])
  table_rows = tf.transpose(table, [1, 0, 2]) if by_key else table  # [B, other, d]

  @fused_attention.custom_gradient_unless_saving
  def contract(x_rows, table_rows):
    logits = tf.matmul(x_rows, table_rows, transpose_b=True)  # [B, s*j*h, other]
    logits = tf.reshape(logits, [shape[2], shape[0], shape[1], shape[3], -1])

    def gradient(d_logits):
      d_rows = tf.transpose(d_logits, to_batch)
      d_rows = tf.reshape(d_rows, [shape[2], shape[0] * shape[1] * shape[3], -1])
      return (tf.matmul(d_rows, table_rows),
              tf.matmul(d_rows, x_rows, transpose_a=True))

    return tf.transpose(logits, from_batch), gradient

  return contract(x_rows, table_rows)


def _retrieve_relative(weights, table):
  """sum_w weights[s,j,h,i,w] table[i,w]: `[s, blocks, queries, heads, d]`.

  weights: `[s, blocks, heads, queries, keys]`; table: `[queries, keys, d]`. A batched
  matmul over queries. Its own gradient recomputes the queries-first transpose of the
  weights, once the backward pass reaches it, instead of keeping it (one full-size
  tensor less between forward and backward).
  """
  shape = tf.unstack(tf.shape(weights), num=5)  # one op, not a slice per use

  def queries_first(tensor):  # [s, j, h, i, w] -> [i, s*j*h, w]
    return tf.reshape(tf.transpose(tensor, [3, 0, 1, 2, 4]),
                      [shape[3], shape[0] * shape[1] * shape[2], shape[4]])

  @fused_attention.custom_gradient_unless_saving
  def contract(weights, table):
    rows = tf.matmul(queries_first(weights), table)  # [i, s*j*h, d]
    rows = tf.reshape(rows, [shape[3], shape[0], shape[1], shape[2], -1])

    def gradient(d_output):
      d_rows = tf.reshape(tf.transpose(d_output, [2, 0, 1, 3, 4]),
                          [shape[3], shape[0] * shape[1] * shape[2], -1])
      d_weights = tf.matmul(d_rows, table, transpose_b=True)  # [i, s*j*h, w]
      d_weights = tf.reshape(d_weights, [shape[3], shape[0], shape[1], shape[2], -1])
      # Without the dependency the executor transposes as soon as the forward weights
      # exist and keeps the copy through the rest of the forward pass (measured: one
      # full-size tensor per layer alive at the step's peak).
      with tf.control_dependencies([d_rows]):
        weights_rows = queries_first(weights)
      return (tf.transpose(d_weights, [1, 2, 3, 0, 4]),
              tf.matmul(weights_rows, d_rows, transpose_a=True))

    return tf.transpose(rows, [1, 2, 0, 3, 4]), gradient

  return contract(weights, table)


def _similarity_sums(q, k, r_q, r_k, valid, content_sums, fused):
  """Sums and squared sums of the similarity terms over the valid pairs, per head.

  The terms are qk[s,j,h,i,w] = q[s,j,i,h].k[s,j,w,h], qr = q[s,j,i,h].r_q[i,w] and
  kr = k[s,j,w,h].r_k[i,w]. Only qk with a mask needs the materialised term;
  the others come from small Gram matrices, e.g. sum over pairs of qr^2 =
  sum_{s,j,i,h} q^T (sum_w valid r_q r_q^T) q, which costs O(length * depth^2)
  instead of O(length * keys * depth) and keeps no full-size tensor for the backward.

  Args:
    q: `[sequences, blocks, queries, heads, depth]`.
    k: `[sequences, blocks, keys, heads, depth]`.
    r_q, r_k: `[queries, keys, depth]` gathered relative embeddings.
    valid: None (every pair valid) or a 0/1 `[blocks, 1, queries, keys]` mask.
    content_sums: with a mask, (sum, squared sum) `[heads]` of the qk term over the
      valid pairs (`_masked_content_sums`); None without.
    fused: Python bool, whether the sums over q and k run on the CPU kernel
      (`fused_attention.gram_statistics`) instead of TF einsums.

  Returns:
    (sums [3, heads], squared sums [3, heads], number of valid pairs per head), all in
    q's dtype.
  """
  sequences = tf.cast(tf.shape(q)[0], q.dtype)
  tables = (_weighted_table_sums(r_q, valid, by_key=False)
            + _weighted_table_sums(r_k, valid, by_key=True))
  gram_statistics = (fused_attention.gram_statistics if fused
                     else _gram_statistics_with_tf_ops)
  sums, squares = gram_statistics(q, k, *tables, with_content=valid is None)
  if valid is not None:
    sums = tf.concat([content_sums[0][None], sums], 0)
    squares = tf.concat([content_sums[1][None], squares], 0)
  pairs = (tf.reduce_prod(tf.shape(r_q)[:2]) if valid is None
           else tf.reduce_sum(valid))
  return sums, squares, sequences * tf.cast(pairs, q.dtype)


def _weighted_table_sums(table, valid, by_key):
  """A relative table summed over each query's (by_key: each key's) valid pairs.

  Args:
    table: `[queries, keys, depth]`.
    valid: None (every pair valid) or a 0/1 `[blocks, 1, queries, keys]` mask.
    by_key: False: sum over keys per query; True: sum over queries per key.

  Returns:
    (sum `[blocks, positions, depth]`, Gram `[blocks, positions, depth, depth]`), with
    blocks = 1 without a mask: sum_pairs t and sum_pairs t t^T. Batched matmuls (small,
    differentiated by autodiff): the einsums they replace cost ~3x as much at
    Axial-ResNet-S's stage sizes, mostly transposes.
  """
  if by_key:
    table = tf.transpose(table, [1, 0, 2])  # [keys, queries, depth]
  if valid is None:
    return (tf.reduce_sum(table, 1)[None],
            tf.matmul(table, table, transpose_a=True)[None])
  weights = valid[:, 0]  # [blocks, queries, keys]
  if by_key:
    weights = tf.transpose(weights, [0, 2, 1])
  weights = tf.cast(weights, table.dtype)
  return (tf.squeeze(tf.matmul(weights[..., None, :], table), -2),
          tf.matmul(weights[..., None] * table, table, transpose_a=True))


def _gram_statistics_with_tf_ops(q, k, r_q_sum, r_q_gram, r_k_sum, r_k_gram,
                                 with_content):
  """`fused_attention.gram_statistics` with TF einsums (any device, XLA, any dtype).

  Arguments and result as there: q `[s, blocks, queries, heads, d]`, k `[s, blocks,
  keys, heads, d]`, table sums `[blocks, positions, d]` and Grams `[blocks, positions,
  d, d]`; (totals, squares) `[terms, heads]`.

  Its own gradient: each sum is linear and each squared sum quadratic in q (or k), so
  with upstream a_h, b_h (qk), c_h, e_h (qr), f_h, g_h (kr):
  d_q = a K_sum + c R_q_sum + q (2 b G_k + e (G_rq + G_rq^T)), and likewise for k,
  where G_k = sum_w k k^T per sequence (kept from the forward pass; small). Two or four
  einsums instead of the dozen of autodiff's gradients of the Gram einsums, measured
  ~10% of Axial-ResNet-S's training step.
  """

  @fused_attention.custom_gradient_unless_saving
  def statistics(q, k, r_q_sum, r_q_gram, r_k_sum, r_k_gram):
    q_gram_over_sequences = tf.einsum("sjihd,sjihe->jihde", q, q)
    k_gram_over_sequences = tf.einsum("sjwhd,sjwhe->jwhde", k, k)
    totals = [tf.einsum("sjihd,jid->h", q, r_q_sum), tf.einsum("sjwhd,jwd->h", k, r_k_sum)]
    squares = [tf.einsum("jihde,jide->h", q_gram_over_sequences, r_q_gram),
               tf.einsum("jwhde,jwde->h", k_gram_over_sequences, r_k_gram)]
    if with_content:
      q_sum, k_sum = tf.reduce_sum(q, axis=2), tf.reduce_sum(k, axis=2)  # [s, j, h, d]
      q_gram = tf.einsum("sjihd,sjihe->sjhde", q, q)
      k_gram = tf.einsum("sjwhd,sjwhe->sjhde", k, k)
      totals.insert(0, tf.einsum("sjhd,sjhd->h", q_sum, k_sum))
      squares.insert(0, tf.einsum("sjhde,sjhde->h", q_gram, k_gram))

    def gradient(d_totals, d_squares):
      d_qr, d_kr = d_totals[-2], d_totals[-1]
      d_qr_squares, d_kr_squares = d_squares[-2], d_squares[-1]

      def symmetrized(gram):
        return gram + tf.linalg.matrix_transpose(gram)

      d_q = (tf.einsum("sjihd,jihde->sjihe", q,
                       tf.einsum("h,jide->jihde", d_qr_squares, symmetrized(r_q_gram)))
             + tf.einsum("h,jid->jihd", d_qr, r_q_sum)[None])
      d_k = (tf.einsum("sjwhd,jwhde->sjwhe", k,
                       tf.einsum("h,jwde->jwhde", d_kr_squares, symmetrized(r_k_gram)))
             + tf.einsum("h,jwd->jwhd", d_kr, r_k_sum)[None])
      if with_content:
        d_qk, d_qk_squares = d_totals[0], 2.0 * d_squares[0]
        d_q += (tf.einsum("sjihd,sjhde->sjihe", q,
                          tf.einsum("h,sjhde->sjhde", d_qk_squares, k_gram))
                + (d_qk[:, None] * k_sum)[:, :, None])
        d_k += (tf.einsum("sjwhd,sjhde->sjwhe", k,
                          tf.einsum("h,sjhde->sjhde", d_qk_squares, q_gram))
                + (d_qk[:, None] * q_sum)[:, :, None])
      return (d_q, d_k, tf.einsum("sjihd,h->jid", q, d_qr),
              tf.einsum("jihde,h->jide", q_gram_over_sequences, d_qr_squares),
              tf.einsum("sjwhd,h->jwd", k, d_kr),
              tf.einsum("jwhde,h->jwde", k_gram_over_sequences, d_kr_squares))

    return (tf.stack(totals), tf.stack(squares)), gradient

  return statistics(q, k, r_q_sum, r_q_gram, r_k_sum, r_k_gram)


def _attend_with_tf_ops(operands, late_offset, v, r_v, dtype):
  """softmax(logits) retrievals of v and r^v with TF ops (any device, XLA, any dtype).

  Args:
    operands: (q_content, k_content, q_position, r_q, k_position, r_k) of
      `PositionSensitiveAxialAttention._logit_operands`, queries/keys
      `[s, blocks, positions, heads, depth]` and tables `[queries, keys, depth]`.
    late_offset: None or `[heads]` added to the logits.
    v: `[s, blocks, keys, heads, dv]`; r_v: `[queries, keys, dv]`.
    dtype: the dtype of the logits and the softmax (the variable dtype).

  Returns:
    (content, position), each `[s, blocks, queries, heads, dv]`.
  """
  q_content, k_content, q_position, r_q, k_position, r_k = operands
  with tf.name_scope("content_logits"):
    content = tf.matmul(_heads_first(q_content), _heads_first(k_content), transpose_b=True)
  with tf.name_scope("query_position_logits"):
    query_position = _relative_logits(q_position, r_q, by_key=False)
  with tf.name_scope("key_position_logits"):
    key_position = _relative_logits(k_position, r_k, by_key=True)
  logits = tf.add_n([tf.cast(t, dtype) for t in (content, query_position, key_position)])
  if late_offset is not None:
    logits += late_offset[:, None, None]
  weights = tf.cast(tf.nn.softmax(logits, axis=-1), v.dtype)
  with tf.name_scope("retrieve_content"):
    retrieved_content = _heads_first(tf.matmul(weights, _heads_first(v)))
  with tf.name_scope("retrieve_position"):
    retrieved_position = _retrieve_relative(weights, r_v)
  return retrieved_content, retrieved_position


def _attend_fused(q, k, v, r_q, r_k, r_v, scale, offset, band, key_inside):
  """As `_attend_with_tf_ops` (float32) on the fused CPU kernel.

  The kernel takes q and k as they are, with the similarity scales and the masks beside
  them, instead of the scaled copies and the extra depth channels of
  `_logit_operands`: those copies, and their gradients, were most of the glue around
  the kernel.

  Args:
    q: `[s, blocks, queries, heads, dq]`; k `[s, blocks, keys, heads, dq]`;
      v `[s, blocks, keys, heads, dv]`.
    r_q, r_k: `[queries, keys, dq]`; r_v `[queries, keys, dv]`.
    scale: None (no batch norm) or `[3, heads]`; offset None or `[heads]`
      (`SimilarityBatchNormalization.scale_and_offset`).
    band: None or a 0/1 `[queries, keys]` mask; key_inside None or 0/1 `[blocks, keys]`.

  Returns:
    (content, position), each `[s, blocks, queries, heads, dv]`.
  """
  def sequences_of_blocks(x):  # [s, blocks, positions, h, d] -> [s * blocks, ...]
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))

  if scale is None:
    scale = tf.ones([3, q.shape[3]])
  table_shape = tf.shape(r_q)[:2]
  if band is None and key_inside is None:
    bias = tf.zeros(tf.concat([[0], table_shape], 0))
  else:
    allowed = tf.ones([1, 1, 1])
    if band is not None:
      allowed *= band[None]
    if key_inside is not None:
      allowed *= key_inside[:, None, :]
    bias = tf.broadcast_to((1.0 - allowed) * _MASKED_LOGIT,
                           tf.concat([tf.shape(allowed)[:1], table_shape], 0))
  shape = tf.shape(q)
  content, position = fused_attention.attend(
      sequences_of_blocks(q), sequences_of_blocks(k), r_q, r_k, sequences_of_blocks(v),
      r_v, scale, bias, offset)
  output_shape = tf.concat([shape[:4], tf.shape(v)[-1:]], 0)
  static_shape = q.shape[:4].concatenate(v.shape[-1:])
  return tuple(tf.ensure_shape(tf.reshape(x, output_shape), static_shape)
               for x in (content, position))


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class PositionSensitiveAxialAttention(tf_keras.layers.Layer):
  """Multi-head position-sensitive self-attention along one axis (see module docstring).

  Input: `[batch, height, width, in_channels]` (height/width may be unknown).
  Output: `[batch, height', width', filters]` where the attended axis has length
  `ceil(length / strides)` and the other axis is unchanged.
  """

  def __init__(self,
               filters,
               axis,
               num_heads=8,
               span=None,
               query_key_fraction=0.5,
               strides=1,
               use_batch_norm=True,
               max_global_length=DEFAULT_MAX_GLOBAL_LENGTH,
               kernel_initializer=None,
               relative_initializer=None,
               batch_norm_momentum=0.9,
               batch_norm_epsilon=1e-5,
               synchronized_batch_norm=False,
               **kwargs):
    """Creates the layer.

    Args:
      filters: Value depth = output channels; split evenly over the heads.
      axis: "height" or "width", the axis attended along.
      num_heads: Number of attention heads.
      span: None for global attention; an odd positive int m for a local window of m
        positions centred on each query.
      query_key_fraction: Query/key depth as a fraction of the value depth (per head
        query depth = filters * query_key_fraction / num_heads, must be an integer).
      strides: Average-pool factor along `axis` applied after the attention.
      use_batch_norm: Apply the three batch norms (qkv, similarity, output).
      max_global_length: Only for `span=None`: longest axis the layer accepts; the
        relative tables have 2 * max_global_length - 1 rows. Use the feature length k to
        reproduce the official layer (kernel_size=k) exactly.
      kernel_initializer: Initializer of `qkv_kernel`; default N(0, 1/in_channels) as in
        the official code.
      relative_initializer: Initializer of `relative_embeddings`; default
        N(0, 1/value_depth_per_head) as in the official code.
      batch_norm_momentum: Keras momentum of the moving statistics (PyTorch 0.1 = 0.9).
      batch_norm_epsilon: Batch-norm epsilon (PyTorch default 1e-5).
      synchronized_batch_norm: Synchronize batch statistics across tf.distribute
        replicas (all three batch norms).
      **kwargs: Base `Layer` arguments (name, dtype, ...).
    """
    super().__init__(**kwargs)
    validation.check_positive_int("filters", filters)
    validation.check_positive_int("num_heads", num_heads)
    validation.check_positive_int("strides", strides)
    validation.check_positive_int("max_global_length", max_global_length)
    if axis not in _AXES:
      raise ValueError(f"`axis` must be one of {_AXES}, got {axis!r}.")
    if filters % num_heads:
      raise ValueError(f"`filters` ({filters}) must be divisible by `num_heads` "
                       f"({num_heads}).")
    value_depth = filters // num_heads
    query_depth = value_depth * query_key_fraction
    if query_depth != int(query_depth) or query_depth < 1:
      raise ValueError(
          f"`query_key_fraction` ({query_key_fraction}) times the per-head value depth "
          f"({value_depth} = filters / num_heads) must be a positive integer, got "
          f"{query_depth}.")
    if span is not None:
      if isinstance(span, bool) or not isinstance(span, int) or span < 1 or span % 2 == 0:
        raise ValueError(f"`span` must be None (global) or an odd positive integer, got "
                         f"{span!r}.")
    self.filters = filters
    self.axis = axis
    self.num_heads = num_heads
    self.span = span
    self.query_key_fraction = query_key_fraction
    self.strides = strides
    self.use_batch_norm = use_batch_norm
    self.max_global_length = max_global_length
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon
    self.synchronized_batch_norm = synchronized_batch_norm
    self.value_depth = value_depth
    self.query_depth = int(query_depth)
    self.kernel_initializer = tf_keras.initializers.get(
        kernel_initializer or tf_keras.initializers.VarianceScaling(
            1.0, "fan_in", "untruncated_normal"))
    self.relative_initializer = tf_keras.initializers.get(
        relative_initializer or tf_keras.initializers.RandomNormal(
            stddev=math.sqrt(1.0 / value_depth)))

  @property
  def table_rows(self):
    """Rows of the relative tables: one per relative offset the layer can see."""
    return 2 * self.max_global_length - 1 if self.span is None else self.span

  @property
  def _head_depth(self):
    return 2 * self.query_depth + self.value_depth

  @property
  def _radius(self):
    """r = (m - 1) / 2 of a local span m: a query sees the keys within r of it."""
    return (self.span - 1) // 2

  @property
  def _block_size(self):
    """Queries per block of the blocked plan: b = max(r, 1), so that a block and one
    block on each side cover every key within r of the block's queries."""
    return max(self._radius, 1)

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 4:
      raise ValueError(f"{type(self).__name__} expects a 4-D [batch, height, width, "
                       f"channels] input, got shape {input_shape}.")
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"The channel dimension of the input must be known, got shape "
                       f"{input_shape}.")
    self.qkv_kernel = self.add_weight(
        "qkv_kernel", (channels, self.num_heads * self._head_depth),
        initializer=self.kernel_initializer)
    self.relative_embeddings = self.add_weight(
        "relative_embeddings", (self.table_rows, self._head_depth),
        initializer=self.relative_initializer)
    if self.use_batch_norm:
      def keras_batch_norm(name):
        return recompute.PausableBatchNormalization(
            momentum=self.batch_norm_momentum, epsilon=self.batch_norm_epsilon,
            synchronized=self.synchronized_batch_norm, name=name, dtype=self.dtype_policy)
      self.qkv_batch_norm = keras_batch_norm("qkv_batch_norm")
      self.similarity_batch_norm = SimilarityBatchNormalization(
          self.num_heads, momentum=self.batch_norm_momentum,
          epsilon=self.batch_norm_epsilon, synchronized=self.synchronized_batch_norm,
          name="similarity_batch_norm", dtype=self.dtype_policy)
      self.output_batch_norm = keras_batch_norm("output_batch_norm")
      # Built here (not on first call) so that weights can be loaded right after build.
      self.qkv_batch_norm.build([None, None, None, self.num_heads * self._head_depth])
      self.similarity_batch_norm.build(None)
      self.output_batch_norm.build([None, None, None, 2 * self.filters])
    super().build(input_shape)

  # -- layout helpers ----------------------------------------------------------------

  def _to_sequences(self, inputs):
    """[b, h, w, c] -> ([b, other, length, c], length) with the attended axis third."""
    if self.axis == "height":
      inputs = tf.transpose(inputs, [0, 2, 1, 3])
    return inputs

  def _from_sequences(self, outputs):
    if self.axis == "height":
      outputs = tf.transpose(outputs, [0, 2, 1, 3])
    return outputs

  def _check_length(self, length):
    """Validates the axis length against the global table; returns assertion ops."""
    if self.span is not None:
      return []
    static = tf.get_static_value(length)
    if static is not None:
      if static > self.max_global_length:
        raise ValueError(
            f"The {self.axis} axis has length {static}, longer than `max_global_length` "
            f"({self.max_global_length}) of this global-span layer; build the layer with "
            f"a larger `max_global_length` or use a local `span`.")
      return []
    return [tf.debugging.assert_less_equal(
        length, self.max_global_length,
        message=f"{self.name}: the {self.axis} axis is longer than max_global_length="
                f"{self.max_global_length}")]

  # -- the blocked representation ----------------------------------------------------
  # Both paths produce queries [s, blocks, block, heads, d], keys/values
  # [s, blocks, window, heads, d], a table-row index [block, window] (the same for
  # every block), a float validity mask [blocks, 1, block, window] (or None) for the
  # statistics, and the two masks it is made of for the logits: the band [block, window]
  # and the keys inside the axis [blocks, window] (each None when all ones). Queries past
  # the axis end (blocked plan) are not masked in the logits: their outputs are cropped.

  def _dense_plan(self, q, k, v, length):
    """One block holding the whole axis: every query sees every key (band-masked)."""
    positions = tf.range(length)
    offsets = positions[None, :] - positions[:, None]  # [query, key] = p - o
    if self.span is None:
      rows = offsets + (self.max_global_length - 1)
      valid = None
    else:
      radius = self._radius
      rows = tf.clip_by_value(offsets + radius, 0, self.span - 1)
      static = tf.get_static_value(length)
      # An axis of at most r + 1 positions puts every pair inside the band.
      valid = None if static is not None and static <= radius + 1 else (
          tf.cast(tf.abs(offsets) <= radius, tf.float32)[None, None])
    band = None if valid is None else valid[0, 0]
    # expand_dims, not x[:, None]: a strided slice's gradient is a full-size copy.
    q, k, v = (tf.expand_dims(x, 1) for x in (q, k, v))
    return q, k, v, rows, valid, band, None

  def _blocked_plan(self, q, k, v, length):
    """Blocks of b=max(r, 1) queries attending to a 3b-key window (O(length * m)).

    r = (m - 1) / 2. The window of block j is its own block and one block on each side,
    which covers every key within r of the block's queries because b >= r.
    """
    block = self._block_size
    num_blocks = (length + block - 1) // block
    padded = num_blocks * block
    # Keys/values: one block of zeros before, and enough after for the last window.
    pad_keys = [[0, 0], [block, padded - length + block], [0, 0], [0, 0]]
    k = tf.pad(k, pad_keys)
    v = tf.pad(v, pad_keys)

    def windows(x):
      # [s, (blocks + 2) * block, h, d] -> [s, blocks, 3 * block, h, d]
      shape = tf.shape(x)
      x = tf.reshape(x, tf.concat([[shape[0], num_blocks + 2, block], shape[2:]], 0))
      return tf.concat([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)

    return (self._query_blocks(q, length, num_blocks, block), windows(k), windows(v),
            *self._block_masks(length, num_blocks, block, halo=block))

  def _dynamic_plan(self, q, k, v, length):
    """The dense or the blocked plan for a length known only when the graph runs.

    The dense plan is the blocked one with a single block of the whole axis and no halo,
    so one set of ops takes (blocks, block, halo) as tensors and gathers the key windows.
    A tf.cond between the two plans would build both: in a functional model's
    construction, which calls every layer at an unknown size, that was a third of the
    time.
    """
    dense = length < 2 * self.span
    block = tf.where(dense, length, self._block_size)
    halo = tf.where(dense, 0, block)
    num_blocks = (length + block - 1) // block
    padded = num_blocks * block
    pad_keys = [[0, 0], [halo, padded - length + halo], [0, 0], [0, 0]]
    # [blocks, window]: block j's keys in the padded axis.
    window_keys = (tf.range(num_blocks) * block)[:, None] + tf.range(block + 2 * halo)
    return (self._query_blocks(q, length, num_blocks, block),
            tf.gather(tf.pad(k, pad_keys), window_keys, axis=1),
            tf.gather(tf.pad(v, pad_keys), window_keys, axis=1),
            *self._block_masks(length, num_blocks, block, halo))

  @staticmethod
  def _query_blocks(q, length, num_blocks, block):
    """[s, length, h, d] -> [s, blocks, block, h, d], zeros past the axis end."""
    q = tf.pad(q, [[0, 0], [0, num_blocks * block - length], [0, 0], [0, 0]])
    return tf.reshape(q, tf.concat([[tf.shape(q)[0], num_blocks, block],
                                    tf.shape(q)[2:]], 0))

  def _block_masks(self, length, num_blocks, block, halo):
    """The plan's table rows and masks for windows of `halo` keys, the block, `halo` keys.

    Returns:
      (rows `[block, window]`, valid `[blocks, 1, block, window]`, band
      `[block, window]`, key_inside `[blocks, window]`), the masks as float 0/1.
    """
    radius = self._radius
    query_in_block = tf.range(block)[:, None]
    key_in_window = tf.range(block + 2 * halo)[None, :]
    offsets = key_in_window - halo - query_in_block  # p - o, [block, window]
    in_band = tf.abs(offsets) <= radius
    rows = tf.clip_by_value(offsets + radius, 0, self.span - 1)
    block_start = (tf.range(num_blocks) * block)[:, None, None]
    query_pos = block_start + query_in_block[None]
    key_pos = block_start + key_in_window[None] - halo
    key_inside = (key_pos >= 0) & (key_pos < length)  # [blocks, 1, window]
    valid = in_band[None] & (query_pos < length) & key_inside
    valid = tf.cast(valid, tf.float32)[:, None]  # [blocks, 1, block, window]
    return (rows, valid, tf.cast(in_band, tf.float32),
            tf.cast(key_inside[:, 0], tf.float32))

  def _plan(self, q, k, v, length):
    if self.span is None:
      return self._dense_plan(q, k, v, length)
    static = tf.get_static_value(length)
    if static is None:
      return self._dynamic_plan(q, k, v, length)
    plan = self._dense_plan if static < 2 * self.span else self._blocked_plan
    return plan(q, k, v, length)

  # -- forward -----------------------------------------------------------------------

  def _similarity_normalization(self, q, k, r_q, r_k, valid, training):
    """The similarity batch norm as (scale `[3, heads]`, offset `[heads]` or None).

    The normalized sum of the three terms is an affine map per (term, head) (see
    `SimilarityBatchNormalization`); its training statistics come from
    `_similarity_sums` (Gram matrices, no per-term tensors), plus, where a mask
    restricts them, the masked qk sums (`_masked_content_sums`).

    Args:
      q: `[s, blocks, queries, heads, dq]`; k: `[s, blocks, keys, heads, dq]`.
      r_q, r_k: `[queries, keys, dq]`.
      valid: None or a 0/1 `[blocks, 1, queries, keys]` mask of the pairs the
        statistics count.
      training: as in `call`.

    Returns:
      `SimilarityBatchNormalization.scale_and_offset`'s (scale, offset), in the variable
      dtype.
    """
    training = _resolve_training(training)
    dtype = self.variable_dtype
    if valid is not None:
      valid = tf.cast(valid, dtype)
    fused = fused_attention.usable(dtype, training)
    content_sums = None  # only masked training statistics need the qk term itself
    if valid is not None and training is not False:
      content_sums = _masked_content_sums(q, k, valid, dtype, fused)

    def sums():
      return _similarity_sums(*[tf.cast(t, dtype) for t in (q, k, r_q, r_k)], valid,
                              content_sums, fused)

    return self.similarity_batch_norm.scale_and_offset(sums, training)

  def _logit_operands(self, q, k, r_q, r_k, scale, offset, band, key_inside):
    """The TF-op path's operands of the normalized logits qk + qr + kr.

    The similarity scales are folded into q and k before the contractions, so the
    normalized terms are never materialised. The per-head offset (kept in training so
    that beta stays in the graph) and the masks ride along in the contractions as extra
    depth channels, (q: offset, r^q: 1), (q: 1, r^q: 0 or the masked logit) and (q: 1,
    k: 0 or the masked logit): a separate add or select on the full logits, and its
    gradient's reduction, cost more (under XLA a select cost ~40% of the layer at 65²).

    Args:
      q: `[s, blocks, queries, heads, dq]`; k: `[s, blocks, keys, heads, dq]`.
      r_q, r_k: `[queries, keys, dq]`.
      scale, offset: `_similarity_normalization`'s, or None without batch norm.
      band: None or a 0/1 `[queries, keys]` mask.
      key_inside: None or a 0/1 `[blocks, keys]` mask.

    Returns:
      ((q_content, k_content, q_position, r_q, k_position, r_k), late_offset): logits
      = q_content . k_content + q_position . r_q + k_position . r_k (+ late_offset
      `[heads]`, only for float16/bfloat16 compute with a float32 offset, else None).
    """
    q_content, q_position, k_position = q, q, k
    if scale is not None:
      folded = tf.cast(scale, q.dtype)[:, :, None]
      q_content, q_position, k_position = q * folded[0], q * folded[1], k * folded[2]
    # s: sequence, j: block, i: query in block, w: key in window, h: head.
    # Finite in float16 too (-1e9 would overflow there).
    masked_logit = max(_MASKED_LOGIT, -float(q.dtype.max) / 2)
    ones = tf.ones_like(q[..., :1])
    late_offset = None
    if offset is not None and q.dtype != self.variable_dtype:
      late_offset = offset  # float16 einsums would round a large offset coarsely
    elif offset is not None:
      q_position = tf.concat([q_position, ones * offset[:, None]], -1)
      r_q = tf.concat([r_q, tf.ones_like(r_q[..., :1])], -1)
    if band is not None:
      q_position = tf.concat([q_position, ones], -1)
      r_q = tf.concat([r_q, tf.cast((1.0 - band) * masked_logit, r_q.dtype)[..., None]], -1)
    if key_inside is not None:
      q_content = tf.concat([q_content, ones], -1)
      key_mask = tf.cast((1.0 - key_inside) * masked_logit, k.dtype)[None, :, :, None, None]
      k = tf.concat([k, key_mask + tf.zeros_like(k[..., :1])], -1)
    return (q_content, k, q_position, r_q, k_position, r_k), late_offset

  @graph_code.graph_call
  def call(self, inputs, training=None):
    if inputs.shape.rank != 4:
      raise ValueError(f"{type(self).__name__} expects a 4-D [batch, height, width, "
                       f"channels] input, got shape {inputs.shape}.")
    # Where the kernel ops normalize, a height layer leaves its input and output in
    # image order and its qkv split and output sum move the rows instead: the
    # projection is per position, so only the rows' order differs.
    in_image_order = self.axis == "height" and self._kernel_normalizes(inputs.dtype,
                                                                       training)
    if in_image_order:  # x: [b, length, other, c]
      x, length_axis = inputs, 1
      batch, dynamic_length, other, _ = tf.unstack(tf.shape(x), num=4)
    else:  # x: [b, other, length, c]
      x, length_axis = self._to_sequences(inputs), 2
      batch, other, dynamic_length, _ = tf.unstack(tf.shape(x), num=4)
    # A Python int when the length is static, so that the path is chosen at trace time.
    length = (x.shape[length_axis] if x.shape[length_axis] is not None
              else dynamic_length)
    checks = self._check_length(length)
    if checks:
      with tf.control_dependencies(checks):  # before anything that indexes by length
        length = tf.identity(length)
    # A 2-D matmul, not an einsum: its gradients are matmuls with transposed operands
    # where the einsum's transposed copies (15-25% of the projection's training step at
    # Axial-ResNet-S's stages).
    qkv = tf.matmul(tf.reshape(x, [-1, self.qkv_kernel.shape[0]]), self.qkv_kernel,
                    name="qkv_projection")
    q, k, v = self._normalized_split(qkv, [batch, other, length], training,
                                     in_image_order)

    q, k, v, rows, valid, band, key_inside = self._plan(q, k, v, length)
    relative = tf.gather(tf.cast(self.relative_embeddings, q.dtype), rows)
    r_q, r_k, r_v = tf.split(relative, [self.query_depth, self.query_depth,
                                        self.value_depth], -1)
    scale = offset = None
    if self.use_batch_norm:
      scale, offset = self._similarity_normalization(q, k, r_q, r_k, valid, training)
    if fused_attention.usable(q.dtype, _resolve_training(training)):
      retrieved_content, retrieved_position = _attend_fused(
          q, k, v, r_q, r_k, r_v, scale, offset, band, key_inside)
    else:
      operands, late_offset = self._logit_operands(q, k, r_q, r_k, scale, offset, band,
                                                   key_inside)
      retrieved_content, retrieved_position = _attend_with_tf_ops(
          operands, late_offset, v, r_v, self.variable_dtype)

    blocks, block = retrieved_content.shape[1:3]
    # The dense plan has no query past the axis end; a no-op slice would still cost a
    # full-size copy in its gradient.
    past_axis_end = not (isinstance(length, int) and blocks == 1 and block == length)

    def to_axis(retrieved):  # [s, blocks, block, h, dv] -> [b, other, length, filters]
      retrieved = tf.reshape(retrieved, [batch, other, -1, self.filters])
      return retrieved[:, :, :length] if past_axis_end else retrieved

    content, position = to_axis(retrieved_content), to_axis(retrieved_position)
    if in_image_order:
      outputs = self._kernel_normalized_sum(content, position, swap_rows=True)
      return average_pool(outputs, (self.strides, 1))
    outputs = self._normalized_sum(content, position, training)
    outputs = average_pool(outputs, (1, self.strides))
    return self._from_sequences(outputs)

  def _kernel_normalizes(self, dtype, training):
    """Whether the qkv and output batch norms run on the kernel ops in this trace."""
    training = _resolve_training(training)
    return self.use_batch_norm and all(
        norm.kernel_normalizes(dtype, training)
        for norm in (self.qkv_batch_norm, self.output_batch_norm))

  def _normalized_split(self, qkv, axes, training, in_image_order=False):
    """The qkv batch norm, then each head's channels split into q, k and v.

    Args:
      qkv: the projection, `[batch * other * length, heads * (2 dq + dv)]`, rows in
        sequence order (image order `[batch, length, other]` with `in_image_order`).
      axes: [batch, other, length].
      training: as in `call`.
      in_image_order: Python bool, only where `_kernel_normalizes`.

    Returns:
      q, k, v: `[batch * other, length, heads, dq or dv]`.

    Training in float32 on the CPU kernel, one op normalizes and writes the three parts
    (`fused_attention.batch_norm_split`), with the Keras layer's moving-average update;
    otherwise the Keras layer and a split.
    """
    batch, other, length = axes
    depths = [self.query_depth, self.query_depth, self.value_depth]
    heads_shape = [batch * other, length, self.num_heads, self._head_depth]
    norm = self.qkv_batch_norm if self.use_batch_norm else None
    if norm is not None and norm.kernel_normalizes(qkv.dtype, _resolve_training(training)):
      rows_shape = ([batch, length, other, self.num_heads, self._head_depth]
                    if in_image_order else heads_shape)
      parts, mean, variance = fused_attention.batch_norm_split(
          tf.reshape(qkv, rows_shape), norm.gamma, norm.beta, depths, norm.epsilon,
          swap_rows=in_image_order)
      norm.update_moving_statistics(mean, variance, tf.shape(qkv)[0])
      return [tf.reshape(part, [batch * other, length, self.num_heads, depth])
              for part, depth in zip(parts, depths)]
    if norm is not None:
      qkv = norm(tf.reshape(qkv, [batch, other, length, -1]), training=training)
    return tf.split(tf.reshape(qkv, heads_shape), depths, -1)

  def _kernel_normalized_sum(self, content, position, swap_rows=False):
    """`_normalized_sum` in training mode on the kernel op (`normalized_sum`).

    With `swap_rows` the sum comes out in image order `[batch, length, other,
    filters]`.
    """
    norm = self.output_batch_norm
    total, means, variances = fused_attention.normalized_sum(
        [content, position], self._per_term(norm.gamma), self._per_term(norm.beta),
        norm.epsilon, swap_rows=swap_rows)
    norm.update_moving_statistics(self._interleaved(means), self._interleaved(variances),
                                  tf.size(content) // self.filters)
    return total

  def _per_term(self, variable):
    """The output batch norm's `[2 * filters]` (channel, term) order -> `[2, filters]`
    (term, channel): content's channels, then position's."""
    return tf.transpose(tf.reshape(variable, [self.filters, 2]))

  def _interleaved(self, per_term):
    """`_per_term`'s inverse."""
    return tf.reshape(tf.transpose(per_term), [2 * self.filters])

  def _normalized_sum(self, content, position, training):
    """Output batch norm over the 2 * filters (channel, term) channels, then sv + sve.

    Args:
      content, position: the retrieved terms, `[batch, other, length, filters]` each.
      training: as in `call`.

    Returns:
      `[batch, other, length, filters]`.

    The batch norm is per channel, so each term is normalized on its own with its half of
    the (channel, term)-interleaved variables: two fused kernels instead of interleaving
    the terms into one tensor, normalizing it and summing its pairs (measured 4× the
    time, fused or not, at 56² batch 4). Moving statistics follow the Keras layer's fused
    path (the unbiased batch variance enters the moving average), paused in a
    recomputation. Synchronized (or unfused) statistics go through the Keras layer.
    """
    if not self.use_batch_norm:
      return content + position
    norm = self.output_batch_norm
    if norm.synchronized or not norm.fused:
      stacked = tf.stack([content, position], axis=-1)
      shape = tf.shape(stacked)
      stacked = tf.reshape(stacked, tf.concat([shape[:3], [2 * self.filters]], 0))
      stacked = norm(stacked, training=training)
      return tf.reduce_sum(tf.reshape(stacked, shape), axis=-1)
    training = _resolve_training(training)
    if not norm.trainable:
      training = False  # a frozen Keras batch norm normalizes with its moving statistics

    gammas, betas = self._per_term(norm.gamma), self._per_term(norm.beta)

    def batch():
      if norm.kernel_normalizes(content.dtype, training):
        return self._kernel_normalized_sum(content, position)
      normalized, means, variances = [], [], []
      for term, gamma, beta in zip((content, position), tf.unstack(gammas),
                                   tf.unstack(betas)):
        output, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            term, gamma, beta, epsilon=norm.epsilon, is_training=True)
        normalized.append(output)
        means.append(mean)
        variances.append(variance)
      # fused_batch_norm's variance is already the unbiased one.
      norm.update_moving_statistics(self._interleaved(tf.stack(means)),
                                    self._interleaved(tf.stack(variances)), rows=None)
      return normalized[0] + normalized[1]

    def moving():
      scales = gammas * tf.math.rsqrt(self._per_term(norm.moving_variance) + norm.epsilon)
      offset = tf.reduce_sum(betas - self._per_term(norm.moving_mean) * scales, axis=0)
      scales = tf.cast(scales, content.dtype)
      return content * scales[0] + position * scales[1] + tf.cast(offset, content.dtype)

    if training is False:
      return moving()
    return _smart_cond(training, batch, moving)

  def compute_output_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape).as_list()
    index = 1 if self.axis == "height" else 2
    if input_shape[index] is not None:
      input_shape[index] = -(-input_shape[index] // self.strides)
    input_shape[-1] = self.filters
    return tf.TensorShape(input_shape)

  def compute_multiply_adds(self, input_shape):
    """Multiply-adds of one forward pass (papers.md §1.7).

    HW * C * (2K + V) for the projection plus HW * L * (3K + 2V) for qk, qr, kr, sv and
    sve, where L = min(span, axis length) (the axis length for the global span),
    K = total query depth and V = filters. Batch norms, softmax and pooling are not
    counted.

    Args:
      input_shape: `[batch, height, width, channels]` or `[height, width, channels]`
        (batch is ignored; counts are per example).

    Returns:
      Python int.
    """
    height, width, channels = list(input_shape)[-3:]
    length = height if self.axis == "height" else width
    attended = length if self.span is None else min(self.span, length)
    key_depth = self.query_depth * self.num_heads
    positions = height * width
    return int(positions * channels * (2 * key_depth + self.filters)
               + positions * attended * (3 * key_depth + 2 * self.filters))

  def get_config(self):
    config = super().get_config()
    config.update(
        filters=self.filters, axis=self.axis, num_heads=self.num_heads, span=self.span,
        query_key_fraction=self.query_key_fraction, strides=self.strides,
        use_batch_norm=self.use_batch_norm, max_global_length=self.max_global_length,
        kernel_initializer=tf_keras.initializers.serialize(self.kernel_initializer),
        relative_initializer=tf_keras.initializers.serialize(self.relative_initializer),
        batch_norm_momentum=self.batch_norm_momentum,
        batch_norm_epsilon=self.batch_norm_epsilon,
        synchronized_batch_norm=self.synchronized_batch_norm)
    return config
