"""SegViT head layers (ATM, QU) against a NumPy post-norm decoder reference."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import segvit
from deeplab_axial.layers import vit


def _dense(layer, x):
  return x @ layer.kernel.numpy() + layer.bias.numpy()


def _layer_norm(layer, x):
  mean = x.mean(-1, keepdims=True)
  variance = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(variance + layer.epsilon) * layer.gamma.numpy() + \
      layer.beta.numpy()


def _attention(layer, query, key_value):
  split = lambda t: t.reshape(t.shape[0], t.shape[1], layer.num_heads, -1).transpose(0, 2, 1, 3)
  q = split(_dense(layer._query, query))
  k = split(_dense(layer._key, key_value))
  v = split(_dense(layer._value, key_value))
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = (weights @ v).transpose(0, 2, 1, 3).reshape(query.shape[0], query.shape[1], -1)
  return _dense(layer._output, attended), logits.mean(1)


def _decoder_layer(layer, queries, memory):
  """Post-norm: LN1(q + SA(q)); LN2(q + CA(q, mem)); LN3(q + W2·ReLU(W1·q))."""
  norm1, norm2, norm3 = layer._norms
  queries = _layer_norm(norm1, queries + _attention(layer.self_attention, queries, queries)[0])
  attended, similarity = _attention(layer.cross_attention, queries, memory)
  queries = _layer_norm(norm2, queries + attended)
  hidden = np.maximum(_dense(layer._mlp_hidden, queries), 0)
  return _layer_norm(norm3, queries + _dense(layer._mlp_output, hidden)), similarity


def _numpy_atm(head, grids):
  batch = grids[0].shape[0]
  queries = np.tile(head.class_queries.numpy()[None], [batch, 1, 1])
  outputs, cumulative = [], 0.0
  layers_per_stage = head.num_layers
  for index, grid in enumerate(grids):
    dense, norm = head._projections[index], head._projection_norms[index]
    decoder = head._decoder_layers[index * layers_per_stage:(index + 1) * layers_per_stage]
    _, height, width, channels = grid.shape
    memory = _layer_norm(norm, _dense(dense, grid.reshape(batch, -1, channels)))
    for layer in decoder:
      queries, similarity = _decoder_layer(layer, queries, memory)
    cumulative = cumulative + similarity.transpose(0, 2, 1).reshape(batch, height, width, -1)
    outputs.append((_dense(head._class_embedding, queries), cumulative))
  return outputs


def test_attention_to_mask_matches_numpy_with_cumulative_stage_masks():
  grids = [np.random.randn(2, 3, 4, 6).astype(np.float32) for _ in range(2)]
  head = segvit.AttentionToMask(num_classes=5, hidden_size=8, num_heads=2, num_layers=2,
                                dropout=0.0)
  outputs = head(grids, training=False)
  assert outputs["class_logits"].shape == (2, 2, 5, 6)
  assert outputs["mask_logits"].shape == (2, 2, 3, 4, 5)
  for stage, (class_logits, masks) in enumerate(_numpy_atm(head, grids)):
    np.testing.assert_allclose(outputs["class_logits"].numpy()[:, stage], class_logits,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs["mask_logits"].numpy()[:, stage], masks,
                               rtol=1e-4, atol=1e-4)


def test_attention_to_mask_per_layer_outputs_and_errors():
  head = segvit.AttentionToMask(num_classes=3, hidden_size=8, num_heads=2, num_layers=3,
                                project_inputs=False, deep_supervision="layers")
  outputs = head([tf.random.normal([1, 2, 5, 8])])
  assert outputs["class_logits"].shape == (1, 3, 3, 4)
  assert outputs["mask_logits"].shape == (1, 3, 2, 5, 3)
  with pytest.raises(ValueError, match="project_inputs=False"):
    segvit.AttentionToMask(3, 8, 2, project_inputs=False)([tf.zeros([1, 2, 2, 4])])
  with pytest.raises(ValueError, match="deep_supervision"):
    segvit.AttentionToMask(3, 8, 2, deep_supervision="all")


def test_semantic_inference_matches_numpy_and_vanishes_for_no_class():
  class_logits = np.random.randn(2, 4, 5).astype(np.float32)
  mask_logits = np.random.randn(2, 3, 3, 4).astype(np.float32)
  probabilities = np.exp(class_logits) / np.exp(class_logits).sum(-1, keepdims=True)
  masks = 1 / (1 + np.exp(-mask_logits))
  expected = np.einsum("bqc,bhwq->bhwc", probabilities[..., :-1], masks)
  np.testing.assert_allclose(
      segvit.atm_semantic_inference(class_logits, mask_logits).numpy(), expected, rtol=1e-5)
  no_class = np.zeros([2, 4, 5], np.float32)
  no_class[..., -1] = 50.0
  assert segvit.atm_semantic_inference(no_class, mask_logits).numpy().max() < 1e-20


def test_query_downsample_then_upsample_shapes_any_size():
  grid = tf.random.normal([2, 6, 10, 8])
  downsampled = vit.QueryDownsample(8, 2)(grid)
  assert downsampled.shape == (2, 3, 5, 8)
  upsample = segvit.QueryUpsample(hidden_size=4, num_heads=2, query_grid_size=(4, 4),
                                  num_layers=1)
  assert upsample([grid, downsampled]).shape == (2, 6, 10, 4)
  traced = tf.function(lambda a, b: upsample([a, b]), input_signature=[
      tf.TensorSpec([None, None, None, 8]), tf.TensorSpec([None, None, None, 8])])
  assert traced(tf.zeros([1, 7, 3, 8]), tf.zeros([1, 4, 2, 8])).shape == (1, 7, 3, 4)


def test_serialization_and_xla_of_attention_to_mask():
  head = segvit.AttentionToMask(num_classes=3, hidden_size=8, num_heads=2, num_layers=1)
  grids = [tf.random.normal([1, 3, 3, 6]), tf.random.normal([1, 3, 3, 6])]
  expected = head(grids, training=False)
  clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(head))
  clone(grids)
  clone.set_weights(head.get_weights())
  compiled = tf.function(lambda x: clone(x, training=False), jit_compile=True)
  for key, value in compiled(grids).items():
    np.testing.assert_allclose(value.numpy(), expected[key].numpy(), atol=1e-4)
  upsample = segvit.QueryUpsample(8, 2, query_grid_size=(2, 3), num_layers=1)
  assert segvit.QueryUpsample.from_config(upsample.get_config()).query_grid_size == (2, 3)


def test_attention_to_mask_mixed_float16():
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    head = segvit.AttentionToMask(num_classes=3, hidden_size=8, num_heads=2, num_layers=1)
    outputs = head([tf.random.normal([1, 3, 3, 6]) * 50])
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  assert outputs["mask_logits"].dtype == tf.float32
  assert all(np.all(np.isfinite(v.numpy())) for v in outputs.values())
