"""Plain Vision Transformer backbone (Dosovitskiy et al. 2021) for SegViT.

Pre-norm transformer blocks on non-overlapping 16×16 patch tokens with learned position
embeddings. The embeddings are stored as a grid `[grid_h, grid_w, hidden_size]` and
bilinearly resized (half-pixel centres) to the token grid of each input, so any input
size works, including sizes unknown until call time. There is no class token and no
final LayerNorm: the backbone returns the raw outputs of the requested blocks as NHWC
token grids, which is what dense heads consume.

Inputs whose height or width is not a multiple of the patch size are zero-padded at the
bottom/right, giving a ⌈H/16⌉ × ⌈W/16⌉ token grid.

Optional "Shrunk" structure (SegViT §3.3): block `shrink_index` (1-based) is a
`QueryDownsample` block. Its queries are the tokens at even rows/columns, its keys and
values the full grid, so every later block runs on a quarter of the tokens (1/32 scale).
"""
import types
from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from deeplab_axial.layers import graph_code
from deeplab_axial.layers import validation

_SERIALIZABLE = tf_keras.saving.register_keras_serializable(package="deeplab_axial")

VIT_PRESETS = types.MappingProxyType({
    "vit_tiny": {"hidden_size": 192, "num_layers": 12, "num_heads": 3},
    "vit_small": {"hidden_size": 384, "num_layers": 12, "num_heads": 6},
    "vit_base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12},
})


def _trunc_normal():
  return tf_keras.initializers.TruncatedNormal(stddev=0.02)


def grid_to_tokens(grid):
  """`[batch, h, w, d]` → `[batch, h·w, d]` (row-major)."""
  shape = tf.shape(grid)
  return tf.reshape(grid, [shape[0], shape[1] * shape[2], grid.shape[-1]])


def tokens_to_grid(tokens, height, width):
  """`[batch, h·w, d]` → `[batch, height, width, d]`."""
  return tf.reshape(tokens, [tf.shape(tokens)[0], height, width, tokens.shape[-1]])


@_SERIALIZABLE
class TokenAttention(tf_keras.layers.Layer):
  """Multi-head scaled dot-product attention between a query and a key/value sequence.

  logits_h = (q_h · k_hᵀ) / √(hidden_size / num_heads), softmax over keys (float32), then
  an output projection. q, k, v projections are linear with bias.

  Call: `layer([query, key_value], training=None, return_logits=False)`; query
  `[batch, n_q, d_q]`, key_value `[batch, n_kv, d_kv]`. Returns `[batch, n_q, hidden_size]`
  and, with `return_logits=True`, also the head-mean of the pre-softmax logits,
  float32 `[batch, n_q, n_kv]` (SegViT's mask logits).
  """

  def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    validation.check_positive_int("hidden_size", hidden_size)
    validation.check_positive_int("num_heads", num_heads)
    if hidden_size % num_heads:
      raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads "
                       f"{num_heads}")
    self.hidden_size = hidden_size
    self.num_heads = num_heads
    self.attention_dropout = attention_dropout

  def build(self, input_shape):
    def dense(name):
      return tf_keras.layers.Dense(self.hidden_size, kernel_initializer=_trunc_normal(),
                                   name=name)

    self._query, self._key, self._value, self._output = (
        dense("query"), dense("key"), dense("value"), dense("output"))
    self._dropout = tf_keras.layers.Dropout(self.attention_dropout)
    super().build(input_shape)

  def _split_heads(self, tokens):
    shape = tf.shape(tokens)
    return tf.reshape(tokens, [shape[0], shape[1], self.num_heads,
                               self.hidden_size // self.num_heads])

  @graph_code.graph_call
  def call(self, inputs, training=None, return_logits=False):
    query, key_value = inputs
    queries = self._split_heads(self._query(query))
    keys = self._split_heads(self._key(key_value))
    values = self._split_heads(self._value(key_value))
    scale = float(self.hidden_size // self.num_heads)**-0.5
    logits = tf.einsum("bqhc,bkhc->bhqk", tf.cast(queries, tf.float32),
                       tf.cast(keys, tf.float32)) * scale
    weights = self._dropout(tf.nn.softmax(logits, axis=-1), training=training)
    attended = tf.einsum("bhqk,bkhc->bqhc", tf.cast(weights, values.dtype), values)
    shape = tf.shape(attended)
    outputs = self._output(tf.reshape(attended, [shape[0], shape[1], self.hidden_size]))
    if return_logits:
      return outputs, tf.reduce_mean(logits, axis=1)
    return outputs

  def compute_multiply_adds(self, input_shape):
    """Per-example multiply-adds: the four projections plus q·kᵀ and weights·v.

    n_q·d_q·D + 2·n_kv·d_kv·D + n_q·D·D (projections) + 2·n_q·n_kv·D (products), with
    D = hidden_size; `input_shape` is `[query_shape, key_value_shape]`.
    """
    query_shape, key_value_shape = input_shape
    n_q, d_q = int(query_shape[-2]), int(query_shape[-1])
    n_kv, d_kv = int(key_value_shape[-2]), int(key_value_shape[-1])
    hidden = self.hidden_size
    return (n_q * d_q * hidden + 2 * n_kv * d_kv * hidden + n_q * hidden * hidden +
            2 * n_q * n_kv * hidden)

  def get_config(self):
    config = super().get_config()
    config.update({"hidden_size": self.hidden_size, "num_heads": self.num_heads,
                   "attention_dropout": self.attention_dropout})
    return config


@_SERIALIZABLE
class TransformerBlock(tf_keras.layers.Layer):
  """Pre-norm ViT block: y = q + Attn(LN1(q), LN1(x)); y + MLP(LN2(y)).

  Call: `layer(tokens, query_tokens=None, training=None)`; tokens `[batch, n, d]` are the
  keys/values and, when `query_tokens` is None, also the queries. With `query_tokens`
  `[batch, n_q, d]` the output has n_q tokens (SegViT's query downsampling).
  Output: `[batch, n_q, d]`. The MLP is Dense(mlp_ratio·d) → GELU → Dense(d).
  """

  def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0,
               dropout: float = 0.0, attention_dropout: float = 0.0,
               layer_norm_epsilon: float = 1e-6, **kwargs):
    super().__init__(**kwargs)
    validation.check_positive_int("hidden_size", hidden_size)
    if not mlp_ratio > 0:
      raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
    self.hidden_size = hidden_size
    self.num_heads = num_heads
    self.mlp_ratio = mlp_ratio
    self.dropout = dropout
    self.attention_dropout = attention_dropout
    self.layer_norm_epsilon = layer_norm_epsilon

  def build(self, input_shape):
    if input_shape[-1] != self.hidden_size:
      raise ValueError(f"TransformerBlock expects {self.hidden_size} channels, got input "
                       f"shape {input_shape}")
    self._norm1 = tf_keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                     name="norm1")
    self._attention = TokenAttention(self.hidden_size, self.num_heads,
                                     self.attention_dropout, name="attention")
    self._norm2 = tf_keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                     name="norm2")
    self._mlp_hidden = tf_keras.layers.Dense(
        int(self.hidden_size * self.mlp_ratio), activation="gelu",
        kernel_initializer=_trunc_normal(), name="mlp_hidden")
    self._mlp_output = tf_keras.layers.Dense(self.hidden_size,
                                             kernel_initializer=_trunc_normal(),
                                             name="mlp_output")
    self._dropout = tf_keras.layers.Dropout(self.dropout)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, tokens, query_tokens=None, training=None):
    queries = tokens if query_tokens is None else query_tokens
    normed_keys = self._norm1(tokens)
    normed_queries = normed_keys if query_tokens is None else self._norm1(query_tokens)
    attended = self._attention([normed_queries, normed_keys], training=training)
    hidden = queries + self._dropout(attended, training=training)
    mlp = self._mlp_output(self._dropout(self._mlp_hidden(self._norm2(hidden)),
                                         training=training))
    return hidden + self._dropout(mlp, training=training)

  def get_config(self):
    config = super().get_config()
    config.update({"hidden_size": self.hidden_size, "num_heads": self.num_heads,
                   "mlp_ratio": self.mlp_ratio, "dropout": self.dropout,
                   "attention_dropout": self.attention_dropout,
                   "layer_norm_epsilon": self.layer_norm_epsilon})
    return config


@_SERIALIZABLE
class QueryDownsample(tf_keras.layers.Layer):
  """SegViT query downsampling (QD): a ViT block whose queries are 2×2-pooled tokens.

  Keys and values are the full token grid; queries (and the residual path) are the
  tokens at even rows and columns (`pooling="nearest"`, the released choice, best in the
  paper's Table 7) or the 2×2 means (`pooling="average"`). The token count drops from
  h·w to ⌈h/2⌉·⌈w/2⌉. The weights are those of an ordinary `TransformerBlock`, so a
  pretrained block can be reused unchanged.

  Input: `[batch, h, w, d]`; output: `[batch, ⌈h/2⌉, ⌈w/2⌉, d]`.
  """

  def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0,
               dropout: float = 0.0, attention_dropout: float = 0.0,
               layer_norm_epsilon: float = 1e-6, pooling: str = "nearest", **kwargs):
    super().__init__(**kwargs)
    if pooling not in ("nearest", "average"):
      raise ValueError(f"pooling must be 'nearest' or 'average', got {pooling!r}")
    self.pooling = pooling
    self._block_config = {"hidden_size": hidden_size, "num_heads": num_heads,
                          "mlp_ratio": mlp_ratio, "dropout": dropout,
                          "attention_dropout": attention_dropout,
                          "layer_norm_epsilon": layer_norm_epsilon}
    self.block = TransformerBlock(name="block", **self._block_config)

  def build(self, input_shape):
    if len(input_shape) != 4:
      raise ValueError(f"QueryDownsample expects a [batch, h, w, d] grid, got "
                       f"{input_shape}")
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, grid, training=None):
    if self.pooling == "nearest":
      pooled = grid[:, ::2, ::2, :]
    else:
      pooled = tf.cast(tf.nn.avg_pool2d(tf.cast(grid, tf.float32), 2, 2, "SAME"),
                       grid.dtype)
    shape = tf.shape(pooled)
    outputs = self.block(grid_to_tokens(grid), query_tokens=grid_to_tokens(pooled),
                         training=training)
    return tokens_to_grid(outputs, shape[1], shape[2])

  def get_config(self):
    config = super().get_config()
    config.update({**self._block_config, "pooling": self.pooling})
    return config


@_SERIALIZABLE
class VisionTransformer(tf_keras.layers.Layer):
  """Plain ViT returning the token grids of chosen blocks.

  Input: float `[batch, H, W, channels]` (already normalized), any H, W.
  Output: dict `{"layer{i}": [batch, h_i, w_i, hidden_size]}` for i in `output_layers`
  (1-based block indices), h_i = ⌈H/patch⌉ (⌈·/2⌉ again after a `QueryDownsample`).

  Args:
    hidden_size, num_layers, num_heads, mlp_ratio: transformer size.
    patch_size: patch side (16 for SegViT).
    position_grid_size: (rows, cols) of the learned position-embedding grid, e.g. (14, 14)
      for 224-pixel pretraining or (32, 32) for 512-pixel inputs; it is bilinearly resized
      to every input's token grid.
    output_layers: blocks whose outputs are returned; default: the last one.
    shrink_index: optional 1-based index of the block replaced by `QueryDownsample`.
    shrink_pooling: `QueryDownsample` pooling.
    dropout, attention_dropout, layer_norm_epsilon: as in `TransformerBlock`.
  """

  def __init__(self, hidden_size: int = 192, num_layers: int = 12, num_heads: int = 3,
               mlp_ratio: float = 4.0, patch_size: int = 16,
               position_grid_size: Tuple[int, int] = (14, 14),
               output_layers: Optional[Sequence[int]] = None,
               shrink_index: Optional[int] = None, shrink_pooling: str = "nearest",
               dropout: float = 0.0, attention_dropout: float = 0.0,
               layer_norm_epsilon: float = 1e-6, **kwargs):
    super().__init__(**kwargs)
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("patch_size", patch_size)):
      validation.check_positive_int(name, value)
    position_grid_size = tuple(position_grid_size)
    if len(position_grid_size) != 2:
      raise ValueError(f"position_grid_size must be (rows, cols), got "
                       f"{position_grid_size!r}")
    for value in position_grid_size:
      validation.check_positive_int("position_grid_size", value)
    output_layers = (num_layers,) if output_layers is None else tuple(output_layers)
    if not output_layers or not all(isinstance(i, int) and 1 <= i <= num_layers
                                    for i in output_layers):
      raise ValueError(f"output_layers must be 1-based block indices in [1, {num_layers}], "
                       f"got {output_layers!r}")
    if shrink_index is not None and not (isinstance(shrink_index, int) and
                                         1 <= shrink_index <= num_layers):
      raise ValueError(f"shrink_index must be None or in [1, {num_layers}], got "
                       f"{shrink_index!r}")
    self.hidden_size = hidden_size
    self.num_layers = num_layers
    self.num_heads = num_heads
    self.mlp_ratio = mlp_ratio
    self.patch_size = patch_size
    self.position_grid_size = position_grid_size
    self.output_layers = output_layers
    self.shrink_index = shrink_index
    self.shrink_pooling = shrink_pooling
    self.dropout = dropout
    self.attention_dropout = attention_dropout
    self.layer_norm_epsilon = layer_norm_epsilon

  @classmethod
  def from_preset(cls, preset: str, **kwargs):
    """ViT with a preset size: `vit_tiny` (192, 12 blocks, 3 heads), `vit_small` (384,
    12, 6) or `vit_base` (768, 12, 12); `kwargs` override or extend the preset."""
    if preset not in VIT_PRESETS:
      raise ValueError(f"preset must be one of {sorted(VIT_PRESETS)}, got {preset!r}")
    return cls(**{**VIT_PRESETS[preset], **kwargs})

  def build(self, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None:
      raise ValueError(f"VisionTransformer expects [batch, height, width, channels] with "
                       f"known channels, got {input_shape}")
    self._patch_embedding = tf_keras.layers.Conv2D(
        self.hidden_size, self.patch_size, strides=self.patch_size, padding="valid",
        kernel_initializer=_trunc_normal(), name="patch_embedding")
    self.position_embedding = self.add_weight(
        name="position_embedding", shape=(*self.position_grid_size, self.hidden_size),
        initializer=_trunc_normal(), trainable=True)
    self._dropout = tf_keras.layers.Dropout(self.dropout)
    block_kwargs = {"hidden_size": self.hidden_size, "num_heads": self.num_heads,
                    "mlp_ratio": self.mlp_ratio, "dropout": self.dropout,
                    "attention_dropout": self.attention_dropout,
                    "layer_norm_epsilon": self.layer_norm_epsilon}
    self._blocks = []
    for index in range(1, self.num_layers + 1):
      if index == self.shrink_index:
        self._blocks.append(QueryDownsample(pooling=self.shrink_pooling,
                                            name=f"block{index}", **block_kwargs))
      else:
        self._blocks.append(TransformerBlock(name=f"block{index}", **block_kwargs))
    super().build(input_shape)

  def interpolated_position_embedding(self, height, width):
    """The position-embedding grid bilinearly resized to `[height, width, hidden_size]`."""
    return tf.image.resize(self.position_embedding, tf.stack([height, width]),
                           method="bilinear")

  @graph_code.graph_call
  def call(self, images, training=None):
    shape = tf.shape(images)
    pad_height = -shape[1] % self.patch_size
    pad_width = -shape[2] % self.patch_size
    images = tf.pad(images, [[0, 0], [0, pad_height], [0, pad_width], [0, 0]])
    grid = self._patch_embedding(images)
    height, width = tf.shape(grid)[1], tf.shape(grid)[2]
    grid += tf.cast(self.interpolated_position_embedding(height, width), grid.dtype)
    tokens = self._dropout(grid_to_tokens(grid), training=training)
    outputs = {}
    for index, block in enumerate(self._blocks, start=1):
      if isinstance(block, QueryDownsample):
        grid = block(tokens_to_grid(tokens, height, width), training=training)
        height, width = tf.shape(grid)[1], tf.shape(grid)[2]
        tokens = grid_to_tokens(grid)
      else:
        tokens = block(tokens, training=training)
      if index in self.output_layers:
        outputs[f"layer{index}"] = tokens_to_grid(tokens, height, width)
    return outputs

  def get_config(self):
    config = super().get_config()
    config.update({
        "hidden_size": self.hidden_size, "num_layers": self.num_layers,
        "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
        "patch_size": self.patch_size, "position_grid_size": list(self.position_grid_size),
        "output_layers": list(self.output_layers), "shrink_index": self.shrink_index,
        "shrink_pooling": self.shrink_pooling, "dropout": self.dropout,
        "attention_dropout": self.attention_dropout,
        "layer_norm_epsilon": self.layer_norm_epsilon})
    return config
