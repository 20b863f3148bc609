"""Recomputed axial blocks (`model.backbone.recompute`) train exactly like kept ones.

The oracle is the same model without recomputation, built with the same weights: the
recomputation replays the forward pass op for op, so losses and moving statistics must
agree to float rounding (1e-6 relative + 1e-6 absolute; a single block is bit-identical)
and gradients to 1e-5 relative + 1e-6 of the model's largest gradient entry (graph
optimisation may sum the recomputed graph's terms in another order; gradients of early
layers are sums of many cancelling terms, some, like a BN beta before another BN, ~0). Batch norm momentum 0.5 makes a second moving-average
update (what a naive recomputation does) move the statistics by half their distance to
the batch statistics, far outside that tolerance.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import config as config_lib
from deeplab_axial.layers import axial_blocks
from deeplab_axial.layers.axial_attention import SimilarityBatchNormalization
from deeplab_axial.layers import recompute
from deeplab_axial.models import builder
from deeplab_axial.models.backbones import axial_resnet
from deeplab_axial.training import sync_batch_norm

_TOLERANCE = dict(rtol=1e-6, atol=1e-6)
_MOMENTUM = 0.5


def _tiny_backbone(recompute_blocks, synchronized_batch_norm=False):
  """axial26s (8 blocks) at 1/32 width (stages 4..32 channels), 2 heads, span 5; residual
  BNs not zero-initialized, so that every weight gets a gradient."""
  tf_keras.utils.set_random_seed(3)
  return axial_resnet.axial_resnet(
      "axial26s", width_multiplier=1 / 32, num_heads=2, span=5, zero_init_residual=False,
      recompute=recompute_blocks, batch_norm_momentum=_MOMENTUM,
      synchronized_batch_norm=synchronized_batch_norm)


def _images(batch=2, size=16):
  return tf.constant(np.random.RandomState(0).uniform(-1, 1, [batch, size, size, 3]),
                     tf.float32)


def _loss(model, images):
  """A loss touching every endpoint, so every block's gradient is non-zero."""
  outputs = model(images, training=True)
  return tf.add_n([tf.reduce_mean(tf.square(tf.cast(value, tf.float32)))
                   for value in outputs.values()])


def _loss_and_gradients(model, images):
  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = _loss(model, images)
    return loss, tape.gradient(loss, model.trainable_variables)
  loss, gradients = step()
  return loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in gradients]


def _values(variables):
  """{"name (#index)": value}: nested layers' variables share names ("block1/gamma:0"),
  so the index keeps every variable apart (the models compared list them in one order)."""
  return {f"{v.name} (#{index})": v.numpy() for index, v in enumerate(variables)}


def _moving_statistics(model):
  """[(name, value)] of every moving statistic in the model's order (the same for the
  kept and recomputed builds). Names repeat across nested layers, so compare by position."""
  return [(v.name, v.numpy()) for v in model.non_trainable_variables]


def _kept_and_recomputed():
  kept = _tiny_backbone(False)
  recomputed = _tiny_backbone(True)
  recomputed.set_weights(kept.get_weights())
  return kept, recomputed


def test_every_block_is_recomputed_and_says_so_in_its_config():
  _, recomputed = _kept_and_recomputed()
  blocks = [layer for layer in recomputed.layers if isinstance(layer, axial_blocks.AxialBlock)]
  assert len(blocks) == 8
  assert all(block.recompute and block.get_config()["recompute"] for block in blocks)
  restored = axial_blocks.AxialBlock.from_config(blocks[0].get_config())
  assert restored.recompute


@pytest.mark.slow
def test_loss_and_every_gradient_equal_the_kept_model():
  kept, recomputed = _kept_and_recomputed()
  images = _images()
  kept_loss, kept_gradients = _loss_and_gradients(kept, images)
  loss, gradients = _loss_and_gradients(recomputed, images)
  np.testing.assert_allclose(loss, kept_loss, **_TOLERANCE)
  assert len(gradients) == len(kept_gradients) == len(kept.trainable_variables)
  largest = max(np.abs(gradient).max() for gradient in kept_gradients)
  # Most gradients are non-zero: a BN beta feeding another BN's input has none, nor has
  # the similarity batch norm's beta (it shifts a head's logits alike, which the softmax
  # ignores; exactly zero on the fused CPU kernel).
  similarity_betas = {id(layer.beta) for layer in kept.submodules
                      if isinstance(layer, SimilarityBatchNormalization)}
  others = [g for variable, g in zip(kept.trainable_variables, kept_gradients)
            if id(variable) not in similarity_betas]
  assert len(others) < len(kept_gradients)
  assert sum(np.abs(g).max() > 0 for g in others) > 0.8 * len(others)
  for variable, actual, expected in zip(kept.trainable_variables, gradients,
                                        kept_gradients):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * largest,
                               err_msg=variable.name)


@pytest.mark.slow
@pytest.mark.parametrize("eager", [False, True])
def test_moving_statistics_are_updated_once_per_step(eager):
  kept, recomputed = _kept_and_recomputed()
  before = _moving_statistics(kept)
  images = _images()
  for model in (kept, recomputed):
    def step(model=model):
      with tf.GradientTape() as tape:
        loss = _loss(model, images)
      return tape.gradient(loss, model.trainable_variables)
    (step if eager else tf.function(step))()
  after_kept, after_recomputed = _moving_statistics(kept), _moving_statistics(recomputed)
  assert len(after_kept) == len(after_recomputed) == len(before) > 100
  # Every moving variance moved (the comparison below could catch a second update; some
  # moving means stay near 0, batch means of ~0) ...
  moved = [np.abs(value - initial).max() for (_, value), (_, initial)
           in zip(after_kept, before)]
  assert all(change > 1e-3 for (name, _), change in zip(before, moved)
             if "variance" in name), moved
  # ... and by exactly one update, as without recomputation.
  for index, ((name, value), (_, recomputed_value)) in enumerate(zip(after_kept,
                                                                     after_recomputed)):
    np.testing.assert_allclose(recomputed_value, value, err_msg=f"{index}: {name}",
                               **_TOLERANCE)


def test_inference_does_not_recompute_or_update():
  kept, recomputed = _kept_and_recomputed()
  images = _images()
  np.testing.assert_array_equal(recomputed(images, training=False)["res5"].numpy(),
                                kept(images, training=False)["res5"].numpy())
  before = _moving_statistics(recomputed)
  recomputed(images, training=False)
  for (name, value), (_, initial) in zip(_moving_statistics(recomputed), before):
    np.testing.assert_array_equal(value, initial, err_msg=name)


@pytest.mark.slow
def test_checkpoint_without_recompute_restores_into_recompute(tmp_path):
  kept = _tiny_backbone(False)
  _loss_and_gradients(kept, _images())  # Any state: weights differ from a fresh build.
  kept(_images(), training=True)  # Moves the moving statistics away from 0 / 1.
  path = tf.train.Checkpoint(backbone=kept).write(str(tmp_path / "kept"))
  tf_keras.utils.set_random_seed(7)
  recomputed = axial_resnet.axial_resnet(
      "axial26s", width_multiplier=1 / 32, num_heads=2, span=5, recompute=True)
  status = tf.train.Checkpoint(backbone=recomputed).read(path)
  status.assert_consumed()
  assert [v.name for v in recomputed.variables] == [v.name for v in kept.variables]
  for restored, saved in zip(recomputed.variables, kept.variables):
    np.testing.assert_array_equal(restored.numpy(), saved.numpy(), err_msg=saved.name)


def test_a_layer_whose_statistics_cannot_pause_is_refused():
  class Plain(tf_keras.layers.Layer):
    def __init__(self):
      super().__init__(name="plain")
      self.norm = tf_keras.layers.BatchNormalization(name="keras_norm")

    def call(self, inputs, training=None):
      return recompute.recompute_grad(
          self, lambda x: self.norm(x, training=True), inputs)

  layer = Plain()
  layer.norm.build([None, 3])
  with pytest.raises(ValueError, match="keras_norm"):
    layer(tf.ones([2, 3]))


def test_synchronized_batch_norm_is_refused_in_the_model_and_by_the_trainer(
    two_cpu_strategy):
  """Recomputing would all-reduce the batch statistics again in the backward pass, where
  the replicas of a Mirrored strategy stall; both ways of synchronizing are refused."""
  built_synchronized = _tiny_backbone(True, synchronized_batch_norm=True)
  with pytest.raises(ValueError, match=r"cannot be recomputed: .*bn1.* synchronize batch "
                                       r"statistics.*train\.sync_batch_norm: false"):
    built_synchronized(_images(), training=True)

  with two_cpu_strategy.scope():
    model = _tiny_backbone(True)
  with pytest.raises(ValueError, match=r"synchronize batch statistics.*"
                                       r"model\.backbone\.recompute: false"):
    sync_batch_norm.configure_sync_batch_norm(model, two_cpu_strategy, enabled=True)
  with two_cpu_strategy.scope():
    kept = _tiny_backbone(False)
  assert sync_batch_norm.configure_sync_batch_norm(kept, two_cpu_strategy, enabled=True)


def _two_blocks(recompute_blocks):
  """Two `AxialBlock`s (a strided projection block, then an identity block: both shortcut
  kinds), 4 filters (8 output channels), 2 heads, span 5, momentum 0.5, residual BNs not
  zero-initialized; a dict of both blocks' outputs as `_loss` expects."""
  tf_keras.utils.set_random_seed(3)
  common = dict(num_heads=2, span=5, zero_init_residual=False,
                batch_norm_momentum=_MOMENTUM, recompute=recompute_blocks)
  inputs = tf_keras.Input((16, 16, 3))
  first = axial_blocks.AxialBlock(4, strides=2, name="block1", **common)(inputs)
  second = axial_blocks.AxialBlock(4, name="block2", **common)(first)
  return tf_keras.Model(inputs, {"block1": first, "block2": second})


@pytest.mark.slow
def test_two_replicas_train_like_the_kept_model(two_cpu_strategy):
  """One SGD step on 4 images over 2 replicas (per-replica batch norm), recomputed ==
  kept: weights and moving statistics after the step.

  Two `AxialBlock`s rather than the 8 of `_tiny_backbone`: what the strategy could break
  (recomputing inside a replica context, each replica's moving-statistics update happening
  once, gradients summed across replicas) is per block, and tracing 8 blocks twice under
  the strategy took ~100 s of this file's time.
  """
  images = _images(batch=4)

  def train(recompute_blocks, initial):
    with two_cpu_strategy.scope():
      model = _two_blocks(recompute_blocks)
      model.set_weights(initial)
      optimizer = tf_keras.optimizers.SGD(0.5)
      optimizer.build(model.trainable_variables)  # else the step is traced twice
    blocks = [layer for layer in model.layers if isinstance(layer, axial_blocks.AxialBlock)]
    assert len(blocks) == 2 and all(b.recompute == recompute_blocks for b in blocks)

    def replica_step(batch):
      with tf.GradientTape() as tape:
        loss = _loss(model, batch) / two_cpu_strategy.num_replicas_in_sync
      optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
      return loss

    @tf.function
    def step():
      def shard(context):
        return images[2 * context.replica_id_in_sync_group:][:2]
      losses = two_cpu_strategy.run(replica_step, args=(
          two_cpu_strategy.experimental_distribute_values_from_function(shard),))
      return two_cpu_strategy.reduce("SUM", losses, axis=None)

    return step().numpy(), _values(model.variables)

  template = _two_blocks(False)
  initial = template.get_weights()
  before = _values(template.variables)
  kept_loss, kept = train(False, initial)
  loss, recomputed = train(True, initial)
  np.testing.assert_allclose(loss, kept_loss, **_TOLERANCE)
  assert kept.keys() == recomputed.keys() == before.keys()
  # The step moved the variables compared below (else equality would prove nothing):
  # every moving variance (by >= 0.2 measured: momentum 0.5) and most of the rest (BN
  # betas and gammas whose BN feeds another BN barely move).
  moved = {name: np.abs(value - before[name]).max() for name, value in kept.items()}
  assert all(moved[name] > 0.05 for name in moved if "moving_variance" in name), moved
  assert sum(change > 1e-3 for change in moved.values()) > 0.75 * len(moved), moved
  # Weights moved by 0.5 x gradients of at most ~1 here; recomputed and kept differ by
  # <= 2e-7 (measured), a second moving-statistics update by >= 0.1.
  for name, value in kept.items():
    np.testing.assert_allclose(recomputed[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_mixed_float16_gradients_equal_the_kept_block(mixed_precision):
  del mixed_precision
  blocks = []
  for recompute_block in (False, True):
    tf_keras.utils.set_random_seed(3)
    block = axial_blocks.AxialBlock(4, num_heads=2, span=3, strides=2,
                                    zero_init_residual=False, recompute=recompute_block)
    block.build([None, 9, 9, 6])
    blocks.append(block)
  blocks[1].set_weights(blocks[0].get_weights())
  images = tf.constant(np.random.RandomState(0).randn(2, 9, 9, 6), tf.float32)
  results = []
  for block in blocks:
    with tf.GradientTape() as tape:
      output = block(images, training=True)
      loss = tf.reduce_sum(tf.cast(output, tf.float32) ** 2)
    assert output.dtype == tf.float16
    gradients = tape.gradient(loss, block.trainable_variables)
    results.append([loss.numpy()] + [tf.convert_to_tensor(g).numpy() for g in gradients])
  for actual, expected in zip(results[1], results[0]):
    np.testing.assert_allclose(actual, expected, **_TOLERANCE)


def test_config_field_reaches_the_model():
  config = config_lib.parse_config("""
      model { meta_architecture: "semantic"
              backbone { name: "axial26s" width_multiplier: 0.125 span: 5
                         output_stride: 16 recompute: true } }
      dataset { name: "shapes" crop_size: [33, 33] }""")
  backbone = builder.build_backbone(config.model.backbone)
  blocks = [layer for layer in backbone.layers if isinstance(layer, axial_blocks.AxialBlock)]
  assert blocks and all(block.recompute for block in blocks)
  config.model.backbone.recompute = False
  backbone = builder.build_backbone(config.model.backbone)
  assert not any(getattr(layer, "recompute", False) for layer in backbone.layers)


def test_recompute_is_refused_for_backbones_without_axial_blocks():
  with pytest.raises(config_lib.ConfigError,
                     match=r"model.backbone.recompute.*Axial-ResNet.*'resnet50'"):
    config_lib.parse_config("""
        model { backbone { name: "resnet50" recompute: true } }
        dataset { name: "shapes" crop_size: [33, 33] }""")
