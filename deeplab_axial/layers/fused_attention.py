"""Fused CPU kernels of axial attention training, compiled from source on first use.

`PositionSensitiveAxialAttention` computes logits = qk + qr + kr, their softmax and the
two retrievals either with TF ops (any device, XLA, float16/bfloat16) or, when training
in float32 on a CPU, with the fused kernel in `kernels/axial_attention.cc` (`attend`):
one pass per (sequence, head) that keeps each logit row in cache and saves only the
log-normalizer for the backward pass, which recomputes the weights. The TF-op path
writes and reads the full `[sequences, heads, queries, keys]` logits dozens of times
per step. `kernels/similarity_statistics.cc` computes the training-mode similarity
batch norm's sums (`gram_statistics`, `masked_content_statistics`), which are float32
under every precision policy. `kernels/batch_norm.cc` holds the layer's two Keras batch
norms in training mode, each fused with the copy beside it: the qkv norm with the split
into q, k and v (`batch_norm_split`), the output norm of the two retrieved terms with
their sum (`normalized_sum`).

The kernels are compiled with the system C++ compiler (`$CXX`, default `g++`) against the
installed TensorFlow's headers, once per (source, TensorFlow version, CPU), into
`$DEEPLAB_AXIAL_KERNEL_CACHE` (default `~/.cache/deeplab_axial/kernels`); this takes
20-40 s. Without a compiler, or when the build fails, a warning names the reason
and the TF-op path runs (same results up to float rounding). Set
`DEEPLAB_AXIAL_FUSED_KERNEL=0` to always use the TF-op path.

Where the kernel does not run:
* while a SavedModel is written (`tf.saved_model.save`, `model.save`, our export; Keras
  traces the training-mode call into it too): a SavedModel must hold only stock TF ops
  so that TF Serving and `tf.saved_model.load` without this package can run it;
* inference (`training` not True), which is what gets exported and served;
* under XLA (`jit_compile=True`, TPUs): XLA cannot compile a custom op;
* machines with a GPU: the kernel is CPU-only and would move the attention off the GPU;
* inside `tf_ops_only()`, for comparisons.
"""
import functools
import hashlib
import logging
import os
import pathlib
import subprocess
import tempfile

import tensorflow as tf
# Private TF modules: tf_keras asks control_flow_util the same XLA question, and
# save_context is how tf.saved_model.save marks the tracing it does.
from tensorflow.python.ops import control_flow_util
from tensorflow.python.saved_model import save_context

from deeplab_axial.layers import scoped_flag

_KERNELS = pathlib.Path(__file__).parent / "kernels"
_SOURCES = (_KERNELS / "axial_attention.cc", _KERNELS / "similarity_statistics.cc",
            _KERNELS / "batch_norm.cc")
_HEADERS = (_KERNELS / "common.h",)
_DISABLE_VARIABLE = "DEEPLAB_AXIAL_FUSED_KERNEL"
_CACHE_VARIABLE = "DEEPLAB_AXIAL_KERNEL_CACHE"

_TF_OPS_ONLY = scoped_flag.ScopedFlag()


def tf_ops_only():
  """Within the block (this thread) attention layers trace only stock TF ops."""
  return _TF_OPS_ONLY.scope()


def _cpu_flags():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return ""


def _compile_command(output):
  include_and_defines = tf.sysconfig.get_compile_flags()
  # -U__AVX512FP16__: on CPUs with AVX512-FP16 (Sapphire Rapids and later) -march=native
  # defines it, and the Eigen headers shipped with TF then fail to compile under g++ 12
  # (PacketMathFP16.h); the kernels use no half-precision packets, and undefining an
  # unknown macro is harmless on every compiler.
  return ([os.environ.get("CXX", "g++"), "-shared", "-fPIC", "-O3", "-march=native",
           "-U__AVX512FP16__", "-fno-math-errno", "-w", *map(str, _SOURCES), "-o", output]
          + include_and_defines + tf.sysconfig.get_link_flags())


@functools.lru_cache(maxsize=None)
def load_library():
  """The loaded op library, or None (after one warning saying why) when unavailable."""
  if os.environ.get(_DISABLE_VARIABLE, "1") == "0":
    return None
  key = hashlib.sha256()
  for source in _SOURCES + _HEADERS:
    key.update(source.read_bytes())
  key.update(tf.__version__.encode())
  key.update(" ".join(_compile_command("")).encode())
  key.update(_cpu_flags().encode())
  cache = pathlib.Path(os.environ.get(_CACHE_VARIABLE) or
                       pathlib.Path.home() / ".cache" / "deeplab_axial" / "kernels")
  library = cache / f"axial_attention_{key.hexdigest()[:16]}.so"
  try:
    if not library.exists():
      cache.mkdir(parents=True, exist_ok=True)
      # Built beside its final name and renamed: concurrent first uses (test workers,
      # replicas of a job on one host) never load a half-written file.
      with tempfile.TemporaryDirectory(dir=cache) as scratch:
        built = os.path.join(scratch, library.name)
        command = _compile_command(built)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode:
          raise RuntimeError(f"{command[0]} exited with {result.returncode}: "
                             f"{result.stderr.strip()[-2000:]}")
        os.replace(built, library)
    return tf.load_op_library(str(library))
  except (OSError, RuntimeError, tf.errors.NotFoundError) as error:
    logging.warning("deeplab_axial: the fused axial-attention CPU kernel is unavailable "
                    "(%s); training uses the TF-op attention path (same results, slower "
                    "on a CPU). Set %s=0 to silence this.", error, _DISABLE_VARIABLE)
    return None


def custom_gradient_unless_saving(forward):
  """`tf.custom_gradient(forward)`, except while a SavedModel is written.

  `forward(*tensors)` returns (outputs, gradient function), as for `tf.custom_gradient`.
  In a save context (`tf.saved_model.save`, Keras `model.save`) the outputs of `forward`
  alone are traced, so the SavedModel holds plain ops that autodiff differentiates (the
  same gradient, without the memory savings). TF's default saving of a custom gradient
  traces the gradient function and searches every captured tensor among the function's
  captures: an `axial26s` Keras `model.save` took 110 s with it (tests/models).
  """
  with_custom_gradient = tf.custom_gradient(forward)

  @functools.wraps(forward)
  def call(*tensors):
    if save_context.in_save_context():
      outputs, _ = forward(*tensors)
      return outputs
    return with_custom_gradient(*tensors)

  return call


def usable(dtype, training):
  """Whether the attention of this trace may run on the fused kernel (module docstring)."""
  if training is not True or dtype != tf.float32 or _TF_OPS_ONLY.is_set():
    return False
  if save_context.in_save_context():
    return False
  if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
    return False
  if tf.config.list_logical_devices("GPU"):
    return False
  return load_library() is not None


def attend(query, key, query_table, key_table, value, value_table, scales, logit_bias,
           offset=None):
  """Softmax attention with content and relative terms, on the fused kernel.

  logits[n,h,i,w] = scales[0,h] query[n,i,h] . key[n,w,h]
                    + scales[1,h] query[n,i,h] . query_table[i,w]
                    + scales[2,h] key[n,w,h] . key_table[i,w]
                    + logit_bias[n % blocks, i, w] (+ offset[h])

  Args:
    query: `[sequences, queries, heads, Dq]`; key `[sequences, keys, heads, Dq]`.
    query_table, key_table: `[queries, keys, Dq]`.
    value: `[sequences, keys, heads, Dv]`; value_table `[queries, keys, Dv]`.
    scales: `[3, heads]`, the similarity batch norm's scales of the three terms.
    logit_bias: `[blocks, queries, keys]` (no gradient), 0 or a large negative logit
      per pair (the masks of a local span), for sequence n the entry n % blocks; or
      `[0, queries, keys]` for none.
    offset: None or `[heads]`, the batch norm's per-head offset. It shifts every logit
      of a row alike, which the softmax ignores: the kernel does not read it and its
      gradient is zero. It is taken so that the variables it comes from stay
      differentiable (a zero gradient rather than none).
    All float32.

  Returns:
    (content, position), each `[sequences, queries, heads, Dv]`: sum_w softmax_w(logits)
    times value[n,w,h], and times value_table[i,w].
  """
  ops = load_library()
  operands = (query, key, query_table, key_table, value, value_table, scales)

  @tf.custom_gradient
  def fused(*differentiable):
    content, position, log_normalizer = ops.deeplab_axial_attention_forward(
        *differentiable[:len(operands)], logit_bias)

    def gradient(d_content, d_position):
      d_content = tf.zeros_like(content) if d_content is None else d_content
      d_position = tf.zeros_like(position) if d_position is None else d_position
      gradients = ops.deeplab_axial_attention_backward(
          *differentiable[:len(operands)], logit_bias, log_normalizer, d_content,
          d_position)
      return list(gradients) + [tf.zeros_like(x) for x in differentiable[len(operands):]]

    return (content, position), gradient

  return fused(*operands, *([] if offset is None else [offset]))


def gram_statistics(query, key, query_table_sum, query_table_gram, key_table_sum,
                    key_table_gram, with_content):
  """Sums and squared sums per head of the similarity terms, on the CPU kernel.

  With the tables already summed over each query's (key's) valid pairs,
  qr sums = sum_{s,j,i} q . query_table_sum[j,i] and qr squared sums
  = sum_{s,j,i} q^T query_table_gram[j,i] q, and kr likewise per key; with
  `with_content` (every pair valid) also qk = sum_{s,j} (sum_i q) . (sum_w k) and
  sum_{s,j} <sum_i q q^T, sum_w k k^T> (`kernels/similarity_statistics.cc`).

  Args:
    query: `[sequences, blocks, queries, heads, depth]`; key `[sequences, blocks, keys,
      heads, depth]`.
    query_table_sum: `[blocks, queries, depth]`; query_table_gram `[blocks, queries,
      depth, depth]`.
    key_table_sum: `[blocks, keys, depth]`; key_table_gram `[blocks, keys, depth, depth]`.
    with_content: Python bool.
    All float32.

  Returns:
    (totals, squares), each `[terms, heads]` with terms (qk, qr, kr), or (qr, kr)
    without content.
  """
  ops = load_library()

  @tf.custom_gradient
  def statistics(*operands):
    totals, squares = ops.deeplab_axial_gram_statistics(*operands,
                                                        with_content=with_content)

    def gradient(d_totals, d_squares):
      d_totals = tf.zeros_like(totals) if d_totals is None else d_totals
      d_squares = tf.zeros_like(squares) if d_squares is None else d_squares
      return ops.deeplab_axial_gram_statistics_grad(*operands, d_totals, d_squares,
                                                    with_content=with_content)

    return (totals, squares), gradient

  return statistics(query, key, query_table_sum, query_table_gram, key_table_sum,
                    key_table_gram)


def masked_content_statistics(query, key, valid):
  """Sum and squared sum per head of the qk term over the pairs where `valid` is 1.

  Args:
    query: `[sequences, blocks, queries, heads, depth]`; key `[sequences, blocks, keys,
      heads, depth]`; valid `[blocks, queries, keys]` (0/1, no gradient). All float32.

  Returns:
    (total, square), each `[heads]`: sum over (s, j, i, w) of valid[j,i,w] times
    q[s,j,i,h] . k[s,j,w,h], and times its square.
  """
  ops = load_library()

  @tf.custom_gradient
  def statistics(query, key):
    total, square = ops.deeplab_axial_masked_content_statistics(query, key, valid)

    def gradient(d_total, d_square):
      d_total = tf.zeros_like(total) if d_total is None else d_total
      d_square = tf.zeros_like(square) if d_square is None else d_square
      return ops.deeplab_axial_masked_content_statistics_grad(query, key, valid, d_total,
                                                              d_square)

    return (total, square), gradient

  return statistics(query, key)


def batch_norm_split(x, gamma, beta, depths, epsilon, swap_rows=False):
  """Training-mode batch norm over the channels (h, d) of x, split per head.

  `kernels/batch_norm.cc`: the batch norm of `FusedBatchNormV3` (batch mean and biased
  variance over every axis but the last two) followed by a split of each head's depth
  into `depths`, in one op, and its gradient likewise.

  Args:
    x: `[..., heads, sum(depths)]`; with `swap_rows`, `[outer, A, B, heads, sum(depths)]`.
    gamma, beta: `[heads * sum(depths)]`, in x's channel order.
    depths: Python ints, the parts' depths per head.
    epsilon: Python float added to the variance.
    swap_rows: Python bool: the parts come out `[outer, B, A, heads, depths[t]]` (a
      transpose in the same pass).
    All float32.

  Returns:
    (parts, mean, variance): parts `[..., heads, depths[t]]` each, and the batch mean
    and biased variance `[heads * sum(depths)]` (no gradient).
  """
  ops = load_library()
  attributes = dict(depths=list(depths), epsilon=epsilon, swap_rows=swap_rows)

  @tf.custom_gradient
  def normalized(x, gamma, beta):
    parts, mean, variance = ops.deeplab_axial_batch_norm_split(
        x, gamma, beta, num_parts=len(depths), **attributes)

    def gradient(*d_outputs):
      d_parts = [tf.zeros_like(part) if d is None else d
                 for part, d in zip(parts, d_outputs)]
      return ops.deeplab_axial_batch_norm_split_grad(x, gamma, mean, variance, d_parts,
                                                     **attributes)

    return (*parts, tf.stop_gradient(mean), tf.stop_gradient(variance)), gradient

  *parts, mean, variance = normalized(x, gamma, beta)
  return parts, mean, variance


def normalized_sum(terms, gamma, beta, epsilon, swap_rows=False):
  """The sum of training-mode batch norms of each term, with its own statistics.

  `kernels/batch_norm.cc`: sum_t gamma[t] (terms[t] - mean_t) / sqrt(variance_t +
  epsilon) + beta[t], with each term's batch mean and biased variance per channel over
  every axis but the last, as `FusedBatchNormV3` normalizes; one op, and its gradient.

  Args:
    terms: list of T tensors `[..., channels]`, one shape; `[outer, B, A, channels]`
      with `swap_rows`.
    gamma, beta: `[T, channels]`.
    epsilon: Python float added to the variance.
    swap_rows: Python bool: the sum comes out `[outer, A, B, channels]`.
    All float32.

  Returns:
    (sum `[..., channels]`, mean `[T, channels]`, variance `[T, channels]`), the
    statistics without gradient.
  """
  ops = load_library()

  @tf.custom_gradient
  def normalized(gamma, beta, *terms):
    total, mean, variance = ops.deeplab_axial_normalized_sum(
        terms, gamma, beta, epsilon=epsilon, swap_rows=swap_rows)

    def gradient(d_total, d_mean, d_variance):
      del d_mean, d_variance  # statistics: no gradient
      d_total = tf.zeros_like(total) if d_total is None else d_total
      d_terms, d_gamma, d_beta = ops.deeplab_axial_normalized_sum_grad(
          terms, gamma, mean, variance, d_total, epsilon=epsilon, swap_rows=swap_rows)
      return [d_gamma, d_beta, *d_terms]

    return (total, tf.stop_gradient(mean), tf.stop_gradient(variance)), gradient

  return normalized(gamma, beta, *terms)
