"""Tests for the ResNet-50/101 baselines: parameters, endpoints, output stride, parity."""
import importlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.models.backbones import resnet

# torchvision's published counts (trainable parameters, 1000 classes).
_RESNET50_PARAMETERS = 25_557_032
_RESNET101_PARAMETERS = 44_549_160


def _trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


_TORCH_EPSILON = 1e-5


@pytest.fixture(scope="module")
def resnet50_classifier():
  # PyTorch's BatchNorm epsilon (the preset default is DeepLab2's 1e-3), as the oracle.
  return resnet.resnet50(num_classes=1000, batch_norm_epsilon=_TORCH_EPSILON)


def test_parameter_count_equals_published(resnet50_classifier):
  assert _trainable(resnet50_classifier) == _RESNET50_PARAMETERS


def test_parameter_count_matches_keras_applications_without_conv_biases(resnet50_classifier):
  # Keras' ResNet50 is the same network except that every conv also has a bias.
  keras_model = tf_keras.applications.ResNet50(weights=None)
  conv_biases = sum(int(np.prod(layer.bias.shape)) for layer in keras_model.layers
                    if isinstance(layer, tf_keras.layers.Conv2D))
  assert conv_biases == 26_560
  assert _trainable(keras_model) - conv_biases == _trainable(resnet50_classifier)
  assert keras_model.count_params() == 25_636_712


@pytest.mark.slow
def test_resnet101_parameter_count():
  assert _trainable(resnet.resnet101(num_classes=1000)) == _RESNET101_PARAMETERS


@pytest.mark.parametrize("output_stride, strides", [
    (32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_endpoint_shapes_per_output_stride(output_stride, strides):
  model = resnet.resnet50(output_stride=output_stride)
  outputs = model(tf.zeros([1, 65, 97, 3]))
  assert sorted(outputs) == ["res2", "res3", "res4", "res5"]
  for (name, channels), stride in zip(
      (("res2", 256), ("res3", 512), ("res4", 1024), ("res5", 2048)), strides):
    # Every stride-2 step rounds up: ceil(65 / s) and ceil(97 / s).
    assert outputs[name].shape == (1, -(-65 // stride), -(-97 // stride), channels), name
  # Dilation changes no parameter.
  assert _trainable(model) == _RESNET50_PARAMETERS - (2048 * 1000 + 1000)


def test_unknown_input_size_and_inception_stem():
  model = resnet.resnet50(stem="inception", output_stride=16)
  assert model.input_shape == (None, None, None, 3)
  for size in ((33, 33), (40, 56)):
    outputs = model(tf.zeros([1, *size, 3]))
    assert outputs["res5"].shape == (1, -(-size[0] // 16), -(-size[1] // 16), 2048)
  # The stem's 3 convs (3→64→64→128) and a 128-channel input to the first block replace
  # the 7×7 conv (3→64): the first block's conv1 and shortcut widen by 64 input channels.
  stem_delta = 9 * (3 * 64 + 64 * 64 + 64 * 128) + 2 * 192 - 7 * 7 * 3 * 64
  block_delta = 64 * 64 + 64 * 256
  assert _trainable(model) == _RESNET50_PARAMETERS - 2_049_000 + stem_delta + block_delta


def _torch_to_keras_weights(torch_model, model):
  """Copies torchvision-layout ResNet weights (incl. BN statistics) into our model."""

  def copy_conv_bn(conv_bn, conv, bn):
    conv_bn.conv.kernel.assign(conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    conv_bn.bn.set_weights([t.detach().numpy() for t in (
        bn.weight, bn.bias, bn.running_mean, bn.running_var)])

  copy_conv_bn(model.get_layer("stem"), torch_model.conv1, torch_model.bn1)
  for stage in range(2, 6):
    for index, block in enumerate(getattr(torch_model, f"layer{stage - 1}")):
      ours = model.get_layer(f"res{stage}_block{index + 1}")
      for k in (1, 2, 3):
        copy_conv_bn(getattr(ours, f"conv{k}"), getattr(block, f"conv{k}"),
                     getattr(block, f"bn{k}"))
      if block.downsample is not None:
        copy_conv_bn(ours.shortcut, block.downsample[0], block.downsample[1])
  if torch_model.fc is not None and "logits" in [layer.name for layer in model.layers]:
    model.get_layer("logits").set_weights([torch_model.fc.weight.detach().numpy().T,
                                           torch_model.fc.bias.detach().numpy()])


def _randomize_torch_batch_norms(torch, torch_model):
  generator = torch.Generator().manual_seed(0)
  for module in torch_model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      shape = module.running_mean.shape
      module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
      module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
      module.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
      module.bias.data.copy_(torch.randn(shape, generator=generator) * 0.1)


def _relative_error(got, want):
  return np.abs(got - want).max() / np.abs(want).max()


def test_logits_match_pytorch_reference(official_resnet, resnet50_classifier):
  torch = importlib.import_module("torch")
  reference = official_resnet
  torch.manual_seed(0)
  torch_model = reference.resnet50().eval()
  assert sum(p.numel() for p in torch_model.parameters()) == _RESNET50_PARAMETERS
  with torch.no_grad():
    _randomize_torch_batch_norms(torch, torch_model)
  _torch_to_keras_weights(torch_model, resnet50_classifier)
  images = np.random.default_rng(0).normal(size=(2, 64, 80, 3)).astype(np.float32)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  got = resnet50_classifier(images, training=False).numpy()
  assert _relative_error(got, want) < 1e-4


def test_dilated_endpoints_match_pytorch_reference(official_resnet):
  torch = importlib.import_module("torch")
  reference = official_resnet
  torch.manual_seed(1)
  # Output stride 8 = torchvision's replace_stride_with_dilation on stages 4 and 5.
  torch_model = reference.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
  with torch.no_grad():
    _randomize_torch_batch_norms(torch, torch_model)
  model = resnet.resnet50(output_stride=8, batch_norm_epsilon=_TORCH_EPSILON)
  _torch_to_keras_weights(torch_model, model)
  images = np.random.default_rng(1).normal(size=(1, 33, 42, 3)).astype(np.float32)
  got = model(images, training=False)
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2))
    x = torch_model.maxpool(torch_model.relu(torch_model.bn1(torch_model.conv1(x))))
    for stage in range(2, 6):
      x = getattr(torch_model, f"layer{stage - 1}")(x)
      want = x.numpy().transpose(0, 2, 3, 1)
      assert got[f"res{stage}"].shape == want.shape
      assert _relative_error(got[f"res{stage}"].numpy(), want) < 1e-4, stage


def test_config_round_trip_and_training_step():
  model = resnet.resnet50(num_classes=3, input_shape=(33, 33, 3))
  clone = tf_keras.Model.from_config(model.get_config())
  clone.set_weights(model.get_weights())
  images = tf.random.normal([2, 33, 33, 3])
  np.testing.assert_allclose(clone(images, training=False), model(images, training=False),
                             rtol=1e-5, atol=1e-6)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(model(images, training=True)))
  gradients = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)


def test_mixed_precision(mixed_precision):  # pylint: disable=unused-argument
  model = resnet.resnet50(num_classes=10, stem="inception", output_stride=16)
  logits = model(tf.random.normal([1, 33, 33, 3]), training=False)
  assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()
  assert model.get_layer("res5_block3").compute_dtype == "float16"


@pytest.mark.parametrize("kwargs, message", [
    ({"output_stride": 4}, "output_stride"),
    ({"stem": "axial"}, "stem"),
    ({"num_classes": 0}, "num_classes"),
    ({"input_shape": (64, 64)}, "input_shape"),
])
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    resnet.resnet50(**kwargs)
