"""DANet: position attention (PAM), channel attention (CAM) and the dual-attention head.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019 (arXiv 1809.02983).
Shapes are NHWC; `n = height * width`.
"""
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import convolutions
from deeplab_axial.layers import graph_code

_CHANNEL_ATTENTION_MODES = ("official", "paper")


def _channels_of(input_shape, layer_name):
  channels = tf.TensorShape(input_shape)[-1]
  if channels is None:
    raise ValueError(f"{layer_name}: the channel dimension of the input must be known, got "
                     f"input shape {input_shape}.")
  return int(channels)


def _flatten_positions(x):
  """[batch, height, width, c] → [batch, height * width, c] (row-major positions)."""
  return tf.reshape(x, [tf.shape(x)[0], -1, x.shape[-1]])


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class PositionAttention(tf_keras.layers.Layer):
  """Position attention module: dense self-attention over all positions, gated residual.

  With `x_i` the feature at position i, `q_i = W_q x_i + b_q`, `k_j = W_k x_j + b_k`,
  `v_j = W_v x_j + b_v` (1×1 convolutions with bias, no normalization):

      a_ij = softmax_j(q_i · k_j)          (no 1/sqrt(d) scaling, as in DANet)
      y_i  = gamma * sum_j a_ij v_j + x_i  (gamma is a scalar initialised to 0)

  The n×n affinity is computed and normalized in float32 even under `mixed_float16`.
  Memory is O(batch · n²).

  Input: `[batch, height, width, channels]`; output: same shape.
  """

  def __init__(self, reduction=8, key_channels=None, **kwargs):
    """Creates the layer.

    Args:
      reduction: Query/key channels are `channels // reduction` (DANet: 8).
      key_channels: Explicit query/key channels; overrides `reduction`.
      **kwargs: Base `Layer` arguments.
    """
    super().__init__(**kwargs)
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
      raise ValueError(f"`reduction` must be a positive integer, got {reduction!r}.")
    if key_channels is not None and (not isinstance(key_channels, int) or key_channels < 1):
      raise ValueError(f"`key_channels` must be None or a positive integer, got "
                       f"{key_channels!r}.")
    self.reduction = reduction
    self.key_channels = key_channels

  def build(self, input_shape):
    channels = _channels_of(input_shape, self.name)
    key_channels = self.key_channels or max(channels // self.reduction, 1)
    self.query = tf_keras.layers.Dense(key_channels, name="query")
    self.key = tf_keras.layers.Dense(key_channels, name="key")
    self.value = tf_keras.layers.Dense(channels, name="value")
    for projection in (self.query, self.key, self.value):
      projection.build(input_shape)
    self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs):
    queries = _flatten_positions(self.query(inputs))
    keys = _flatten_positions(self.key(inputs))
    values = _flatten_positions(self.value(inputs))
    energy = tf.einsum("bic,bjc->bij", tf.cast(queries, tf.float32), tf.cast(keys, tf.float32))
    attention = tf.cast(tf.nn.softmax(energy, axis=-1), values.dtype)
    context = tf.reshape(tf.einsum("bij,bjc->bic", attention, values), tf.shape(inputs))
    return tf.cast(self.gamma, inputs.dtype) * context + inputs

  def compute_multiply_adds(self, input_shape):
    """Per-example multiply-adds: n·c·(2k + c) projections + n²·(k + c) attention.

    Args:
      input_shape: `[batch, height, width, channels]` or `[height, width, channels]`.
    """
    height, width, channels = list(input_shape)[-3:]
    key_channels = self.key_channels or max(channels // self.reduction, 1)
    positions = height * width
    return int(positions * channels * (2 * key_channels + channels)
               + positions**2 * (key_channels + channels))

  def get_config(self):
    config = super().get_config()
    config.update({"reduction": self.reduction, "key_channels": self.key_channels})
    return config


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class ChannelAttention(tf_keras.layers.Layer):
  """Channel attention module: attention between channels, gated residual. No projections.

  With `X` the `[n, c]` matrix of features, `E = Xᵀ X` (`[c, c]`):

      mode "official": A = softmax_rows(max_row(E) - E)   (the DANet code; = softmax(-E))
      mode "paper":    A = softmax_rows(E)
      y = gamma * X Aᵀ + X                                  (gamma is a scalar, init 0)

  The "official" mode is what the released DANet code (and weights) use: subtracting from
  the row maximum leaves a softmax over `-E`, so the least correlated channels get the
  largest weights. Affinity and softmax are computed in float32.

  Input: `[batch, height, width, channels]`; output: same shape.
  """

  def __init__(self, mode="official", **kwargs):
    """Creates the layer.

    Args:
      mode: "official" (max-minus energy, as the DANet code) or "paper" (softmax of E).
      **kwargs: Base `Layer` arguments.
    """
    super().__init__(**kwargs)
    if mode not in _CHANNEL_ATTENTION_MODES:
      raise ValueError(f"`mode` must be one of {_CHANNEL_ATTENTION_MODES}, got {mode!r}.")
    self.mode = mode

  def build(self, input_shape):
    _channels_of(input_shape, self.name)
    self.gamma = self.add_weight(name="gamma", shape=(), initializer="zeros")
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs):
    features = _flatten_positions(inputs)
    features32 = tf.cast(features, tf.float32)
    energy = tf.einsum("bnc,bnd->bcd", features32, features32)
    if self.mode == "official":
      energy = tf.reduce_max(energy, axis=-1, keepdims=True) - energy
    attention = tf.cast(tf.nn.softmax(energy, axis=-1), features.dtype)
    context = tf.reshape(tf.einsum("bcd,bnd->bnc", attention, features), tf.shape(inputs))
    return tf.cast(self.gamma, inputs.dtype) * context + inputs

  def compute_multiply_adds(self, input_shape):
    """Per-example multiply-adds: 2·n·c² (affinity and aggregation).

    Args:
      input_shape: `[batch, height, width, channels]` or `[height, width, channels]`.
    """
    height, width, channels = list(input_shape)[-3:]
    return int(2 * height * width * channels**2)

  def get_config(self):
    config = super().get_config()
    config.update({"mode": self.mode})
    return config


@tf_keras.saving.register_keras_serializable(package="deeplab_axial")
class DualAttentionHead(tf_keras.layers.Layer):
  """DANet head: a PAM branch and a CAM branch, summed, then classified.

  Each branch: 3×3 conv-BN-ReLU (channels → inter_channels), attention module, 3×3
  conv-BN-ReLU. The fused features are the sum of both branch outputs; each of the three
  features (fused, PAM-only, CAM-only) goes through spatial dropout and its own 1×1
  classifier. The branch logits are the auxiliary outputs DANet supervises too.

  Input: `[batch, height, width, channels]` (DANet: C5 of a dilated ResNet at OS 8).
  Output: dict of `[batch, height, width, num_classes]` tensors:
    `logits` (fused), `position_logits` (PAM only), `channel_logits` (CAM only).
  """

  def __init__(self,
               num_classes,
               inter_channels=None,
               dropout=0.1,
               reduction=8,
               channel_attention_mode="official",
               batch_norm_momentum=0.99,
               batch_norm_epsilon=1e-5,
               **kwargs):
    """Creates the head.

    Args:
      num_classes: Number of output classes.
      inter_channels: Branch width; default `channels // 4` (512 for a 2048-channel C5).
      dropout: Spatial dropout rate before each classifier.
      reduction: PAM query/key reduction.
      channel_attention_mode: CAM mode, "official" or "paper".
      batch_norm_momentum: Keras momentum of the batch norms.
      batch_norm_epsilon: Epsilon of the batch norms.
      **kwargs: Base `Layer` arguments.
    """
    super().__init__(**kwargs)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
    if inter_channels is not None and (not isinstance(inter_channels, int) or
                                       inter_channels < 1):
      raise ValueError(f"`inter_channels` must be None or a positive integer, got "
                       f"{inter_channels!r}.")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
    if channel_attention_mode not in _CHANNEL_ATTENTION_MODES:
      raise ValueError(f"`channel_attention_mode` must be one of {_CHANNEL_ATTENTION_MODES}, "
                       f"got {channel_attention_mode!r}.")
    self.num_classes = num_classes
    self.inter_channels = inter_channels
    self.dropout = dropout
    self.reduction = reduction
    self.channel_attention_mode = channel_attention_mode
    self.batch_norm_momentum = batch_norm_momentum
    self.batch_norm_epsilon = batch_norm_epsilon

  def _conv3x3(self, filters, name):
    return convolutions.ConvBNReLU(
        filters, 3, batch_norm_momentum=self.batch_norm_momentum,
        batch_norm_epsilon=self.batch_norm_epsilon, name=name)

  def _classifier(self, name):
    return tf_keras.Sequential([
        tf_keras.layers.SpatialDropout2D(self.dropout),
        tf_keras.layers.Conv2D(self.num_classes, 1, name="conv"),
    ], name=name)

  def build(self, input_shape):
    channels = _channels_of(input_shape, self.name)
    inter = self.inter_channels or max(channels // 4, 1)
    inter_shape = tf.TensorShape(input_shape)[:-1].concatenate([inter])
    self.position_in = self._conv3x3(inter, "position_in")
    self.position_attention = PositionAttention(self.reduction, name="position_attention")
    self.position_out = self._conv3x3(inter, "position_out")
    self.channel_in = self._conv3x3(inter, "channel_in")
    self.channel_attention = ChannelAttention(self.channel_attention_mode,
                                              name="channel_attention")
    self.channel_out = self._conv3x3(inter, "channel_out")
    self.fused_classifier = self._classifier("fused_classifier")
    self.position_classifier = self._classifier("position_classifier")
    self.channel_classifier = self._classifier("channel_classifier")
    self.position_in.build(input_shape)
    self.channel_in.build(input_shape)
    for layer in (self.position_attention, self.position_out, self.channel_attention,
                  self.channel_out, self.fused_classifier, self.position_classifier,
                  self.channel_classifier):
      layer.build(inter_shape)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    position = self.position_in(inputs, training=training)
    position = self.position_out(self.position_attention(position), training=training)
    channel = self.channel_in(inputs, training=training)
    channel = self.channel_out(self.channel_attention(channel), training=training)
    return {
        "logits": self.fused_classifier(position + channel, training=training),
        "position_logits": self.position_classifier(position, training=training),
        "channel_logits": self.channel_classifier(channel, training=training),
    }

  def get_config(self):
    config = super().get_config()
    config.update({
        "num_classes": self.num_classes,
        "inter_channels": self.inter_channels,
        "dropout": self.dropout,
        "reduction": self.reduction,
        "channel_attention_mode": self.channel_attention_mode,
        "batch_norm_momentum": self.batch_norm_momentum,
        "batch_norm_epsilon": self.batch_norm_epsilon,
    })
    return config
