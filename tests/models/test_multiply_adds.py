"""Tests for count_multiply_adds against hand-computed formulas."""
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.models import count_multiply_adds
from deeplab_axial.models.backbones import resnet
from deeplab_axial.models.meta import panoptic_deeplab


def test_builtin_layers_match_hand_formulas():
  model = tf_keras.Sequential([
      tf_keras.Input((17, 19, 3)),
      tf_keras.layers.Conv2D(8, 3, strides=2, padding="same"),        # → 9×10×8
      tf_keras.layers.BatchNormalization(),
      tf_keras.layers.ReLU(),
      tf_keras.layers.Conv2D(6, 3, dilation_rate=2, padding="same"),  # → 9×10×6
      tf_keras.layers.DepthwiseConv2D(5, depth_multiplier=2),         # → 5×6×12
      tf_keras.layers.SeparableConv2D(4, 3, strides=2, padding="same"),  # → 3×3×4
      tf_keras.layers.Conv2D(8, 3, groups=2, padding="same"),         # → 3×3×8
      tf_keras.layers.Conv2DTranspose(2, 3, strides=2),               # 3×3 inputs
      tf_keras.layers.MaxPool2D(),
      tf_keras.layers.GlobalAveragePooling2D(),
      tf_keras.layers.Dense(10),
  ])
  want = [
      9 * 10 * 8 * (3 * 3 * 3),
      9 * 10 * 6 * (3 * 3 * 8),
      5 * 6 * 12 * (5 * 5),                 # each output channel sees one input channel
      3 * 3 * 12 * (3 * 3) + 3 * 3 * 4 * 12,  # depthwise at the strided size, then 1×1
      3 * 3 * 8 * (3 * 3 * 2),              # 2 groups: each output sees 4 / 2 channels
      3 * 3 * 8 * (3 * 3 * 2),              # every input pixel scatters a 3×3×2 kernel
      2 * 10,
  ]
  total, breakdown = count_multiply_adds(model, (17, 19, 3), per_layer=True)
  assert [count for _, count in breakdown] == want
  assert total == sum(want)
  # A batch dimension is accepted and ignored: counts are per image.
  assert count_multiply_adds(model, (4, 17, 19, 3)) == total


@tf_keras.saving.register_keras_serializable(package="deeplab_axial_test")
class _TwoConvs(tf_keras.layers.Layer):
  """Subclassed layer whose convs are only reachable through its attributes."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.first = tf_keras.layers.Conv2D(4, 1)
    self.second = tf_keras.layers.Conv2D(4, 3, padding="same")

  def call(self, inputs):
    # `second` is shared: called twice, counted twice.
    return self.second(self.second(self.first(inputs)))


class _OwnCount(tf_keras.layers.Layer):
  """Reports its own cost; its inner conv must not be counted again."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.inner = tf_keras.layers.Conv2D(4, 3, padding="same")
    self.seen_shapes = []

  def call(self, inputs):
    return self.inner(inputs)

  def compute_multiply_adds(self, input_shape):
    self.seen_shapes.append(tuple(input_shape))
    return 1000


def test_subclassed_layers_shared_layers_and_own_counts():
  images = tf_keras.Input((None, None, 3))
  x = _TwoConvs()(images)
  own = _OwnCount()
  x = own(x)
  model = tf_keras.Model(images, x)
  want = 5 * 7 * (3 * 4) + 2 * 5 * 7 * (9 * 4 * 4) + 1000
  assert count_multiply_adds(model, (5, 7, 3)) == want
  assert own.seen_shapes == [(1, 5, 7, 4)]
  # The wrappers are removed afterwards: the model still runs and counts again.
  assert model(tf.zeros([1, 5, 7, 3])).shape == (1, 5, 7, 4)
  assert count_multiply_adds(model, (5, 7, 3)) == want


def _resnet50_hand_count(size):
  """torchvision ResNet-50 multiply-adds from its layer table."""
  total = 0
  side = (size + 1) // 2
  total += side * side * 7 * 7 * 3 * 64   # stem
  side = (side + 1) // 2                   # max-pool
  channels = 64
  for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
    for index in range(blocks):
      block_stride = stride if index == 0 else 1
      out_side = (side + block_stride - 1) // block_stride
      total += side * side * channels * width            # 1×1 reduce
      total += out_side * out_side * 9 * width * width   # 3×3 (strided)
      total += out_side * out_side * width * 4 * width   # 1×1 expand
      if index == 0:
        total += out_side * out_side * channels * 4 * width  # projection shortcut
      side, channels = out_side, 4 * width
  return total + 2048 * 1000  # classifier


def test_resnet50_at_224_matches_hand_count():
  total, breakdown = count_multiply_adds(resnet.resnet50(num_classes=1000), (224, 224, 3),
                                         per_layer=True)
  assert total == _resnet50_hand_count(224) == 4_089_184_256  # the published "4.1B"
  assert len(breakdown) == 53 + 1  # 49 convs + 4 projection shortcuts, plus the classifier
  assert breakdown[0] == ("resnet50/stem/conv", 112 * 112 * 7 * 7 * 3 * 64)


def test_panoptic_decoder_inside_nested_models():
  images = tf_keras.Input((None, None, 3))
  res2 = tf_keras.layers.Conv2D(8, 3, strides=4, padding="same")(images)
  res3 = tf_keras.layers.Conv2D(12, 3, strides=2, padding="same")(res2)
  res5 = tf_keras.layers.Conv2D(16, 3, strides=2, padding="same")(res3)
  backbone = tf_keras.Model(images, {"res2": res2, "res3": res3, "res5": res5})
  model = panoptic_deeplab.panoptic_deeplab(
      backbone, 3, aspp_channels=8, atrous_rates=(1, 2, 3), semantic_decoder_channels=8,
      instance_decoder_channels=6, semantic_low_level_projections=(4, 2),
      instance_low_level_projections=(3, 2), semantic_head_channels=8,
      center_head_channels=4, offset_head_channels=4)
  p2, p3, p5 = 9 * 11, 5 * 6, 3 * 3  # positions at OS 4, 8, 16 for a 33×41 input
  backbone_count = p2 * 9 * 3 * 8 + p3 * 9 * 8 * 12 + p5 * 9 * 12 * 16

  def separable(positions, c_in, c_out):
    return positions * (25 * c_in + c_in * c_out)

  def decoder(decoder_channels, projections):
    aspp = p5 * 16 * 8 * (1 + 3 * 9) + 16 * 8 + p5 * 5 * 8 * 8
    return (aspp + p3 * 12 * projections[0] + separable(p3, 8 + projections[0], decoder_channels)
            + p2 * 8 * projections[1]
            + separable(p2, decoder_channels + projections[1], decoder_channels))

  heads = (separable(p2, 8, 8) + p2 * 8 * 3 + separable(p2, 6, 4) + p2 * 4
           + separable(p2, 6, 4) + p2 * 4 * 2)
  want = backbone_count + decoder(8, (4, 2)) + decoder(6, (3, 2)) + heads
  assert count_multiply_adds(model, (33, 41, 3)) == want


@pytest.mark.parametrize("input_shape", [(224, 224), (0, 224, 3), (1.5, 2, 3), None])
def test_bad_input_shapes_raise(input_shape):
  model = tf_keras.Sequential([tf_keras.Input((None, None, 3)), tf_keras.layers.Conv2D(2, 1)])
  with pytest.raises(ValueError, match="input_shape"):
    count_multiply_adds(model, input_shape)
