"""SegViT (Zhang et al., NeurIPS 2022) head layers: attention-to-mask and query upsampling.

* `AttentionToMask` (ATM): learnable class queries (one per class) cross-attend to ViT
  tokens; the head-mean of the scaled query·key similarity S (before the softmax) is each
  class's mask logit map, sigmoid(S) its mask; the updated queries give class logits over
  K + 1 classes (the last is "no class"). `atm_semantic_inference` turns them into
  per-pixel class scores.
* `QueryUpsample` (QU): a learnable grid of queries decoded against the high-resolution
  features from before query downsampling and the low-resolution final features,
  restoring a 1/16-scale token grid for the Shrunk SegViT (`QueryDownsample` lives in
  `layers.vit`).

Decoder layers are post-norm, as in PyTorch's `nn.TransformerDecoderLayer` used by the
released code: q ← LN1(q + SelfAttn(q)); q ← LN2(q + CrossAttn(q, memory));
q ← LN3(q + FFN(q)) with a ReLU FFN of width mlp_ratio·d.
"""
from typing import Tuple

import tensorflow as tf
import tf_keras

from deeplab_axial.layers import graph_code
from deeplab_axial.layers import validation
from deeplab_axial.layers import vit

_SERIALIZABLE = tf_keras.saving.register_keras_serializable(package="deeplab_axial")
_DEEP_SUPERVISION_MODES = ("stages", "layers")


def _input_projections(hidden_size, count):
  """Linear + LayerNorm per input: two flat lists of `count` layers."""
  denses = [tf_keras.layers.Dense(
      hidden_size, kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02),
      name=f"projection{i + 1}") for i in range(count)]
  norms = [tf_keras.layers.LayerNormalization(epsilon=1e-5, name=f"projection_norm{i + 1}")
           for i in range(count)]
  return denses, norms


def _decoder_stack(hidden_size, num_heads, mlp_ratio, dropout, num_inputs, num_layers,
                   prefix):
  """num_inputs·num_layers decoder layers, flat, input-major."""
  return [TransformerDecoderLayer(hidden_size, num_heads, mlp_ratio, dropout,
                                  name=f"{prefix}{s + 1}_layer{l + 1}")
          for s in range(num_inputs) for l in range(num_layers)]


def _as_list(inputs):
  """Keras unwraps one-element input lists when a saved functional model is reloaded."""
  if isinstance(inputs, (list, tuple)):
    return list(inputs)
  return [inputs]


@_SERIALIZABLE
class TransformerDecoderLayer(tf_keras.layers.Layer):
  """Post-norm transformer decoder layer that also returns the cross-attention logits.

  Call: `layer(queries, memory, training=None)`; queries `[batch, n_q, d]`, memory
  `[batch, n_kv, d]`. Returns `(queries [batch, n_q, d], similarity [batch, n_q, n_kv])`,
  the similarity being the head-mean of (q·k)/√(d/heads) of the cross-attention (float32).
  """

  def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0,
               dropout: float = 0.1, layer_norm_epsilon: float = 1e-5, **kwargs):
    super().__init__(**kwargs)
    self.hidden_size = hidden_size
    self.num_heads = num_heads
    self.mlp_ratio = mlp_ratio
    self.dropout = dropout
    self.layer_norm_epsilon = layer_norm_epsilon
    self.self_attention = vit.TokenAttention(hidden_size, num_heads, dropout,
                                             name="self_attention")
    self.cross_attention = vit.TokenAttention(hidden_size, num_heads, dropout,
                                              name="cross_attention")

  def build(self, input_shape):
    if input_shape[-1] != self.hidden_size:
      raise ValueError(f"TransformerDecoderLayer expects queries with {self.hidden_size} "
                       f"channels, got {input_shape}")
    self._norms = [tf_keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                      name=f"norm{i}") for i in (1, 2, 3)]
    self._mlp_hidden = tf_keras.layers.Dense(int(self.hidden_size * self.mlp_ratio),
                                             activation="relu", name="mlp_hidden")
    self._mlp_output = tf_keras.layers.Dense(self.hidden_size, name="mlp_output")
    self._dropout = tf_keras.layers.Dropout(self.dropout)
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, queries, memory, training=None):
    attended = self.self_attention([queries, queries], training=training)
    queries = self._norms[0](queries + self._dropout(attended, training=training))
    attended, similarity = self.cross_attention([queries, memory], training=training,
                                                return_logits=True)
    queries = self._norms[1](queries + self._dropout(attended, training=training))
    hidden = self._dropout(self._mlp_hidden(queries), training=training)
    queries = self._norms[2](queries + self._dropout(self._mlp_output(hidden),
                                                     training=training))
    return queries, similarity

  def get_config(self):
    config = super().get_config()
    config.update({"hidden_size": self.hidden_size, "num_heads": self.num_heads,
                   "mlp_ratio": self.mlp_ratio, "dropout": self.dropout,
                   "layer_norm_epsilon": self.layer_norm_epsilon})
    return config


@_SERIALIZABLE
class AttentionToMask(tf_keras.layers.Layer):
  """SegViT ATM decoder with fixed query ↔ class assignment.

  Inputs: a list of S feature grids `[batch, h_i, w_i, C_i]` in processing order (SegViT
  feeds the deepest ViT layer first). Each is projected to `hidden_size` by Linear + LN
  (`project_inputs=True`) and decoded by `num_layers` `TransformerDecoderLayer`s. One
  query table of `num_classes` tokens is shared by all stages and carried from stage to
  stage.

  Outputs (dict, float32), with T outputs:
    `class_logits`: `[batch, T, num_classes, num_classes + 1]` (Linear on the queries);
    `mask_logits`: `[batch, T, h, w, num_classes]` at the last input's grid size.
  With `deep_supervision="stages"` (plain SegViT) T = S: output i uses the last layer of
  stage i and its mask is the cumulative sum of the stage similarity maps 1..i (each
  bilinearly resized to the last grid). With `"layers"` (the Shrunk head, S = 1)
  T = S·num_layers: every decoder layer gives an independent output.
  """

  def __init__(self, num_classes: int, hidden_size: int, num_heads: int,
               num_layers: int = 3, mlp_ratio: float = 4.0, dropout: float = 0.1,
               project_inputs: bool = True, deep_supervision: str = "stages", **kwargs):
    super().__init__(**kwargs)
    for name, value in (("num_classes", num_classes), ("hidden_size", hidden_size),
                        ("num_heads", num_heads), ("num_layers", num_layers)):
      validation.check_positive_int(name, value)
    if deep_supervision not in _DEEP_SUPERVISION_MODES:
      raise ValueError(f"deep_supervision must be one of {_DEEP_SUPERVISION_MODES}, got "
                       f"{deep_supervision!r}")
    self.num_classes = num_classes
    self.hidden_size = hidden_size
    self.num_heads = num_heads
    self.num_layers = num_layers
    self.mlp_ratio = mlp_ratio
    self.dropout = dropout
    self.project_inputs = project_inputs
    self.deep_supervision = deep_supervision

  def build(self, input_shape):
    input_shape = _as_list(input_shape)
    if not input_shape or \
        not all(len(shape) == 4 for shape in input_shape):
      raise ValueError(f"AttentionToMask expects a non-empty list of [batch, h, w, C] "
                       f"grids, got input shapes {input_shape}")
    for shape in input_shape:
      if not self.project_inputs and shape[-1] != self.hidden_size:
        raise ValueError(f"with project_inputs=False every input needs {self.hidden_size} "
                         f"channels, got {shape}")
    self.class_queries = self.add_weight(
        name="class_queries", shape=(self.num_classes, self.hidden_size),
        initializer=tf_keras.initializers.RandomNormal(stddev=1.0), trainable=True)
    # Flat lists of layers: Keras saving does not look into nested containers.
    self._projections, self._projection_norms = (
        _input_projections(self.hidden_size, len(input_shape)) if self.project_inputs
        else ([], []))
    self._decoder_layers = _decoder_stack(self.hidden_size, self.num_heads, self.mlp_ratio,
                                          self.dropout, len(input_shape), self.num_layers,
                                          "stage")
    self._class_embedding = tf_keras.layers.Dense(self.num_classes + 1, dtype="float32",
                                                  name="class_embedding")
    super().build(input_shape)

  @staticmethod
  def _to_mask_grid(similarity, grid, final_size):
    """[b, K, h·w] similarity of `grid`'s tokens → [b, final_h, final_w, K]."""
    similarity = vit.tokens_to_grid(tf.transpose(similarity, [0, 2, 1]),
                                    tf.shape(grid)[1], tf.shape(grid)[2])
    return tf.image.resize(similarity, final_size)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    inputs = _as_list(inputs)
    batch = tf.shape(inputs[0])[0]
    queries = tf.tile(tf.cast(self.class_queries, self.compute_dtype)[tf.newaxis],
                      [batch, 1, 1])
    final_size = tf.shape(inputs[-1])[1:3]
    stage_outputs = []  # (queries, similarity map [b, h, w, K]) per output
    for index, grid in enumerate(inputs):
      memory = vit.grid_to_tokens(grid)
      if self.project_inputs:
        memory = self._projection_norms[index](self._projections[index](memory))
      decoder = self._decoder_layers[index * self.num_layers:(index + 1) * self.num_layers]
      for layer_index, layer in enumerate(decoder):
        queries, similarity = layer(queries, memory, training=training)
        if self.deep_supervision == "layers":
          stage_outputs.append((queries, self._to_mask_grid(similarity, grid, final_size)))
        elif layer_index == self.num_layers - 1:
          mask = self._to_mask_grid(similarity, grid, final_size)
          if stage_outputs:
            mask += stage_outputs[-1][1]
          stage_outputs.append((queries, mask))
    class_logits = tf.stack([self._class_embedding(tf.cast(q, tf.float32))
                             for q, _ in stage_outputs], axis=1)
    mask_logits = tf.stack([m for _, m in stage_outputs], axis=1)
    return {"class_logits": class_logits, "mask_logits": mask_logits}

  def get_config(self):
    config = super().get_config()
    config.update({"num_classes": self.num_classes, "hidden_size": self.hidden_size,
                   "num_heads": self.num_heads, "num_layers": self.num_layers,
                   "mlp_ratio": self.mlp_ratio, "dropout": self.dropout,
                   "project_inputs": self.project_inputs,
                   "deep_supervision": self.deep_supervision})
    return config


def atm_semantic_inference(class_logits, mask_logits):
  """Per-pixel class scores Σ_q softmax(class_logits)[q, c]·sigmoid(mask_logits)[q].

  The "no class" column is dropped after the softmax, so a query whose probability mass
  is on "no class" contributes nothing.

  Args:
    class_logits: float `[batch, K, K + 1]`.
    mask_logits: float `[batch, h, w, K]`.

  Returns:
    float32 `[batch, h, w, K]`, values ≥ 0.
  """
  probabilities = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., :-1]
  masks = tf.sigmoid(tf.cast(mask_logits, tf.float32))
  return tf.einsum("bqc,bhwq->bhwc", probabilities, masks)


@_SERIALIZABLE
class QueryUpsample(tf_keras.layers.Layer):
  """SegViT query upsampling (QU) for the Shrunk structure.

  A learnable query grid `[grid_h, grid_w, hidden_size]` is bilinearly resized to the
  grid size of the first input (so any input size works: a deliberate, flagged deviation
  from the released fixed-size query table), then decoded by one stack of `num_layers`
  `TransformerDecoderLayer`s per input, in order, against that input projected by
  Linear + LN. SegViT feeds [features before query downsampling (1/16), final features
  (1/32)].

  Inputs: a list of grids `[batch, h_i, w_i, C_i]`. Output: `[batch, h_1, w_1, hidden_size]`.
  """

  def __init__(self, hidden_size: int, num_heads: int,
               query_grid_size: Tuple[int, int] = (32, 32), num_layers: int = 3,
               mlp_ratio: float = 4.0, dropout: float = 0.1, **kwargs):
    super().__init__(**kwargs)
    for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads),
                        ("num_layers", num_layers)):
      validation.check_positive_int(name, value)
    query_grid_size = tuple(query_grid_size)
    if len(query_grid_size) != 2:
      raise ValueError(f"query_grid_size must be (rows, cols), got {query_grid_size!r}")
    for value in query_grid_size:
      validation.check_positive_int("query_grid_size", value)
    self.hidden_size = hidden_size
    self.num_heads = num_heads
    self.query_grid_size = query_grid_size
    self.num_layers = num_layers
    self.mlp_ratio = mlp_ratio
    self.dropout = dropout

  def build(self, input_shape):
    input_shape = _as_list(input_shape)
    if not input_shape or \
        not all(len(shape) == 4 for shape in input_shape):
      raise ValueError(f"QueryUpsample expects a non-empty list of [batch, h, w, C] grids, "
                       f"got input shapes {input_shape}")
    self.query_grid = self.add_weight(
        name="query_grid", shape=(*self.query_grid_size, self.hidden_size),
        initializer=tf_keras.initializers.RandomNormal(stddev=1.0), trainable=True)
    self._projections, self._projection_norms = _input_projections(self.hidden_size,
                                                                   len(input_shape))
    self._decoder_layers = _decoder_stack(self.hidden_size, self.num_heads, self.mlp_ratio,
                                          self.dropout, len(input_shape), self.num_layers,
                                          "memory")
    super().build(input_shape)

  @graph_code.graph_call
  def call(self, inputs, training=None):
    inputs = _as_list(inputs)
    height, width = tf.shape(inputs[0])[1], tf.shape(inputs[0])[2]
    queries = tf.image.resize(self.query_grid, tf.stack([height, width]))
    queries = tf.tile(tf.cast(vit.grid_to_tokens(queries[tf.newaxis]), self.compute_dtype),
                      [tf.shape(inputs[0])[0], 1, 1])
    for index, grid in enumerate(inputs):
      memory = self._projection_norms[index](self._projections[index](
          vit.grid_to_tokens(grid)))
      for layer in self._decoder_layers[index * self.num_layers:
                                        (index + 1) * self.num_layers]:
        queries, _ = layer(queries, memory, training=training)
    return vit.tokens_to_grid(queries, height, width)

  def get_config(self):
    config = super().get_config()
    config.update({"hidden_size": self.hidden_size, "num_heads": self.num_heads,
                   "query_grid_size": list(self.query_grid_size),
                   "num_layers": self.num_layers, "mlp_ratio": self.mlp_ratio,
                   "dropout": self.dropout})
    return config


@_SERIALIZABLE
class AtmSemanticScores(tf_keras.layers.Layer):
  """`atm_semantic_inference` of the last ATM output, resized to the image size.

  Inputs: `[class_logits [batch, T, K, K + 1], mask_logits [batch, T, h, w, K], image]`;
  the image only gives the output size. Output: float32 `[batch, H, W, K]`.
  """

  @graph_code.graph_call
  def call(self, inputs):
    class_logits, mask_logits, image = inputs
    scores = atm_semantic_inference(class_logits[:, -1], mask_logits[:, -1])
    return tf.image.resize(scores, tf.shape(image)[1:3])
