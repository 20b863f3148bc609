"""Helpers shared by tests (imported as `tests.helpers`); fixtures live in conftest.py."""
import numpy as np


def randomize_batch_norms(layer, rng):
  """Random running statistics, scales and offsets for every batch norm of `layer`.

  Fresh batch norms are the identity in inference mode (mean 0, variance 1, gamma 1,
  beta 0), which would hide a wrong normalization; `rng` is a `np.random.Generator`.
  """
  for weight in layer.weights:
    name = weight.name.split("/")[-1]
    if name.startswith("moving_variance"):
      weight.assign(rng.uniform(0.5, 2.0, weight.shape))
    elif name.startswith(("moving_mean", "beta")):
      weight.assign(rng.normal(0.0, 0.3, weight.shape))
    elif name.startswith("gamma"):
      weight.assign(rng.uniform(0.5, 1.5, weight.shape))


def tiny_backbone(widths, *, output_stride=16, input_shape=(None, None, 3),
                  batch_norm=None, name="tiny_backbone"):
  """A plain-Keras stand-in for a backbone: one 3x3 convolution + ReLU per endpoint.

  Args:
    widths: {endpoint name: channels}, in order. The first convolution has stride 4, each
      next one 2 while the output stride stays <= output_stride, else 1 (as a dilated
      ResNet).
    output_stride: the largest stride of an endpoint.
    input_shape: `(height, width, 3)`, None entries for any size.
    batch_norm: None, or `(momentum, epsilon)` of a batch norm after each convolution
      (which then has no bias).
    name: the model's name.

  Returns:
    A tf_keras.Model: images `[batch, height, width, 3]` → {name: `[batch, height / s,
    width / s, channels]`}.
  """
  import tf_keras  # pylint: disable=import-outside-toplevel
  images = tf_keras.Input(input_shape)
  x, stride, endpoints = images, 1, {}
  for index, (endpoint, channels) in enumerate(widths.items()):
    step = 4 if index == 0 else (2 if stride * 2 <= output_stride else 1)
    stride *= step
    x = tf_keras.layers.Conv2D(channels, 3, strides=step, padding="same",
                               use_bias=batch_norm is None)(x)
    if batch_norm is not None:
      x = tf_keras.layers.BatchNormalization(momentum=batch_norm[0], epsilon=batch_norm[1])(x)
    x = endpoints[endpoint] = tf_keras.layers.ReLU()(x)
  return tf_keras.Model(images, endpoints, name=name)
