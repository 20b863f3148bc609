"""Tests for enable_sync_batch_norm: 2 replicas with sync BN == 1 device on the global batch."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.layers import axial_attention
from deeplab_axial.training import loop
from deeplab_axial.training import sync_batch_norm

_MOMENTUM = 0.9


def _model():
  """Input BN (checked against NumPy) -> conv -> BN -> axial attention (its own BNs)."""
  inputs = tf_keras.Input((6, 6, 3))
  x = tf_keras.layers.BatchNormalization(momentum=_MOMENTUM, name="input_bn")(inputs)
  x = tf_keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
  x = tf_keras.layers.BatchNormalization(momentum=_MOMENTUM, name="conv_bn")(x)
  x = axial_attention.PositionSensitiveAxialAttention(4, "height", num_heads=2,
                                                      max_global_length=6, name="axial")(x)
  return tf_keras.Model(inputs, x)


def _global_batch():
  """Two halves with different means and scales, so per-replica statistics differ."""
  rng = np.random.default_rng(3)
  first = rng.normal(0.0, 1.0, size=(2, 6, 6, 3))
  second = rng.normal(4.0, 3.0, size=(2, 6, 6, 3))
  return np.concatenate([first, second]).astype(np.float32)


def _moving_statistics(model):
  """[(variable name, [value on each replica])] of every moving mean/variance, in order.

  A list, not a dict: the axial layer's inner batch norms share variable names.
  """
  strategy = tf.distribute.get_strategy()
  return [(v.name, [np.asarray(x) for x in strategy.experimental_local_results(v)])
          for v in model.non_trainable_weights if "moving" in v.name]


def _single_device_run(weights, images):
  """One device, whole batch, unfused batch norm.

  Unfused because tf_keras' fused kernel adds the *unbiased* batch variance to the moving
  variance and the unfused (and synchronized) path the biased one: a factor n / (n - 1)
  that this test's tiny n = 144 pixels per channel would make visible.
  """
  model = _model()
  model.set_weights(weights)
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      layer.fused = False
  outputs = model(images, training=True).numpy()
  return model, outputs


def _two_replica_run(strategy, weights, images, synchronized):
  with strategy.scope():
    model = _model()
    model.set_weights(weights)
  if synchronized:
    # input_bn, conv_bn, the axial layer's qkv/output BN and its similarity BN.
    assert sync_batch_norm.enable_sync_batch_norm(model) == 5
  dataset = tf.data.Dataset.from_tensor_slices(images).batch(len(images))
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
  step = tf.function(lambda x: strategy.run(lambda y: model(y, training=True), args=(x,)))
  outputs = np.concatenate([o.numpy() for o in strategy.experimental_local_results(
      step(batch))])
  with strategy.scope():
    statistics = _moving_statistics(model)
  return statistics, outputs


@pytest.fixture(name="reference")
def _reference():
  images = _global_batch()
  weights = _model().get_weights()
  model, outputs = _single_device_run(weights, images)
  return images, weights, _moving_statistics(model), outputs


def test_input_batch_norm_moving_statistics_match_numpy(reference):
  images, _, statistics, _ = reference
  mean = images.mean(axis=(0, 1, 2))
  variance = images.var(axis=(0, 1, 2))  # Keras tracks the biased batch variance.
  statistics = dict(statistics)
  moving_mean = statistics["input_bn/moving_mean:0"][0]
  moving_variance = statistics["input_bn/moving_variance:0"][0]
  np.testing.assert_allclose(moving_mean, (1 - _MOMENTUM) * mean, rtol=1e-5)
  np.testing.assert_allclose(moving_variance, _MOMENTUM + (1 - _MOMENTUM) * variance,
                             rtol=1e-5)


def test_synchronized_two_replicas_equal_one_device(reference, two_cpu_strategy):
  images, weights, expected_statistics, expected_outputs = reference
  statistics, outputs = _two_replica_run(two_cpu_strategy, weights, images,
                                         synchronized=True)
  assert len(statistics) == 10  # moving mean + variance of each of the 5 batch norms.
  for (name, per_replica), (expected_name, expected) in zip(statistics,
                                                            expected_statistics):
    assert name == expected_name and len(per_replica) == 2
    for value in per_replica:
      np.testing.assert_allclose(value, expected[0], rtol=1e-4, atol=1e-5, err_msg=name)
  np.testing.assert_allclose(outputs, expected_outputs, rtol=1e-4, atol=1e-4)


def test_unsynchronized_two_replicas_differ_from_one_device(reference, two_cpu_strategy):
  images, weights, expected_statistics, expected_outputs = reference
  statistics, outputs = _two_replica_run(two_cpu_strategy, weights, images,
                                         synchronized=False)
  name = "input_bn/moving_variance:0"
  expected = dict(expected_statistics)[name][0]
  # Each replica only saw its own half of the batch.
  for value in dict(statistics)[name]:
    assert np.max(np.abs(value - expected)) > 0.1
  assert np.max(np.abs(outputs - expected_outputs)) > 0.1


def test_synchronized_layers_are_unfused_and_inference_is_unchanged(reference):
  images, weights, _, _ = reference
  model = _model()
  model.set_weights(weights)
  before = model(images, training=False).numpy()
  sync_batch_norm.enable_sync_batch_norm(model)
  batch_norms = [m for m in model.submodules
                 if isinstance(m, tf_keras.layers.BatchNormalization)]
  assert batch_norms and all(bn.synchronized and not bn.fused for bn in batch_norms)
  np.testing.assert_allclose(model(images, training=False).numpy(), before, rtol=1e-5,
                             atol=1e-5)


def test_rejects_unbuilt_model_and_ghost_batch_norm():
  with pytest.raises(ValueError, match="built tf_keras model"):
    sync_batch_norm.enable_sync_batch_norm(
        tf_keras.Sequential([tf_keras.layers.BatchNormalization()]))
  ghost = tf_keras.Sequential([tf_keras.layers.BatchNormalization(virtual_batch_size=2,
                                                                  name="ghost")])
  ghost.build((None, 4, 4, 3))
  with pytest.raises(ValueError, match="'ghost' has virtual_batch_size=2"):
    sync_batch_norm.enable_sync_batch_norm(ghost)


def test_configure_enables_only_with_several_replicas_and_without_xla(two_cpu_strategy):
  with two_cpu_strategy.scope():
    model = _model()
  bn = model.get_layer("input_bn")
  one_device = tf.distribute.get_strategy()
  assert not sync_batch_norm.configure_sync_batch_norm(model, one_device, enabled=True)
  assert not sync_batch_norm.configure_sync_batch_norm(model, two_cpu_strategy, False)
  assert not sync_batch_norm.configure_sync_batch_norm(model, two_cpu_strategy, True,
                                                       jit_compile=True)
  assert not bn.synchronized
  assert sync_batch_norm.configure_sync_batch_norm(model, two_cpu_strategy, True)
  assert bn.synchronized


def test_trainer_with_sync_batch_norm_on_two_replicas_matches_one_device(
    tmp_path, two_cpu_strategy):
  """Two training steps through loop.Trainer (gradients flow through the all-reduce)."""
  images = _global_batch()
  targets = np.random.default_rng(4).normal(size=(4, 6, 6, 4)).astype(np.float32)

  def conv_bn_model():  # Without the axial layer: tracing it would double the test time.
    model = tf_keras.Sequential([
        tf_keras.layers.Conv2D(4, 3, padding="same"),
        tf_keras.layers.BatchNormalization(momentum=_MOMENTUM)])
    model.build((None, 6, 6, 3))
    return model

  weights = conv_bn_model().get_weights()

  def dataset_fn(context):
    per_replica = context.get_per_replica_batch_size(len(images))
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "target": targets}).batch(per_replica).repeat()

  def compute_losses(batch, outputs):
    per_example = tf.reduce_mean(tf.square(outputs - batch["target"]), axis=[1, 2, 3])
    return {"total": tf.nn.compute_average_loss(per_example, global_batch_size=len(images))}

  def train(strategy, model_dir, synchronized):
    with strategy.scope():
      model = conv_bn_model()
      model.set_weights(weights)
      optimizer = tf_keras.optimizers.SGD(0.1)
    if synchronized:
      sync_batch_norm.enable_sync_batch_norm(model)
    else:  # The single-device reference: unfused, see _single_device_run.
      for layer in model.submodules:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
          layer.fused = False
    loop.Trainer(strategy=strategy, model=model, optimizer=optimizer,
                 compute_losses=compute_losses, loss_names=("total",),
                 train_dataset_fn=dataset_fn, global_batch_size=len(images), total_steps=2,
                 model_dir=str(model_dir), log_fn=lambda _: None).train()
    return model

  reference = train(tf.distribute.get_strategy(), tmp_path / "one", synchronized=False)
  mirrored = train(two_cpu_strategy, tmp_path / "two", synchronized=True)
  for expected, actual in zip(reference.weights, mirrored.weights):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5,
                               err_msg=expected.name)
