"""Reads the committed outputs of the official PyTorch axialnet (tests/fixtures/
official_axialnet, written by tests/fixtures/make_official_fixtures.py)."""
import os

import numpy as np

from tests.fixtures import make_official_fixtures


def load(file_name):
  """{key: array} of one fixture file (`attention.npz`, `block.npz`, `axial_resnet.npz`)."""
  with np.load(os.path.join(make_official_fixtures.FIXTURE_DIR, file_name)) as data:
    return {key: data[key] for key in data.files}


def case(arrays, name):
  """(state_dict, input, {output name: array}) of case `name`; floats widened to float32."""
  prefix = f"{name}/"
  state_prefix = f"{prefix}state/"
  state, outputs = {}, {}
  for key, value in arrays.items():
    if key.startswith(state_prefix):
      state[key[len(state_prefix):]] = (value.astype(np.float32) if value.dtype == np.float16
                                        else value)
    elif key.startswith(prefix) and key != f"{prefix}input":
      outputs[key[len(prefix):]] = value
  return state, arrays[f"{prefix}input"].astype(np.float32), outputs


# Mapping of official parameters onto our layers, written from the two papers' equations
# independently of deeplab_axial.models.torch_weights (which the model tests check).

def assign_batch_norm(keras_bn, state, prefix, shape=None):
  """`<prefix>.{weight,bias,running_mean,running_var}` → a Keras BatchNormalization."""
  for variable, key in ((keras_bn.gamma, "weight"), (keras_bn.beta, "bias"),
                        (keras_bn.moving_mean, "running_mean"),
                        (keras_bn.moving_variance, "running_var")):
    value = state[f"{prefix}.{key}"]
    variable.assign(value.reshape(shape) if shape else value)


def assign_attention(layer, state, prefix=None):
  """An official AxialAttention's parameters → PositionSensitiveAxialAttention.

  The official relative table holds offsets -(k-1)..k-1 by column, for queries and values
  indexed by o - p and for keys by p - o; ours holds rows by p - o, hence the reversals.
  """
  name = (lambda key: key) if prefix is None else (lambda key: f"{prefix}.{key}")
  dq = layer.query_depth
  layer.qkv_kernel.assign(state[name("qkv_transform.weight")][:, :, 0].T)
  table = state[name("relative")]
  layer.relative_embeddings.assign(np.concatenate(
      [table[:dq, ::-1].T, table[dq:2 * dq].T, table[2 * dq:, ::-1].T], axis=1))
  assign_batch_norm(layer.qkv_batch_norm, state, name("bn_qkv"))
  assign_batch_norm(layer.similarity_batch_norm, state, name("bn_similarity"), (3, -1))
  assign_batch_norm(layer.output_batch_norm, state, name("bn_output"))


def assign_conv(conv, weight):
  conv.kernel.assign(weight.transpose(2, 3, 1, 0))  # [out, in, 1, 1] → [1, 1, in, out]
