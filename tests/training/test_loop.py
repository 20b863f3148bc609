"""Tests for the distributed training loop (checkpoints, resume, NaN handling, replicas)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import progress as progress_lib
from deeplab_axial.training import loop

_GLOBAL_BATCH = 4


def _global_batch():
  rng = np.random.default_rng(0)
  return {"image": rng.normal(size=(_GLOBAL_BATCH, 4, 4, 3)).astype(np.float32),
          "target": rng.normal(size=(_GLOBAL_BATCH, 4, 4, 2)).astype(np.float32)}


def _dataset_fn(batch):
  """Repeats the same global batch; replicas take consecutive per-replica slices of it."""

  def fn(ctx):
    per_replica = ctx.get_per_replica_batch_size(_GLOBAL_BATCH)
    return tf.data.Dataset.from_tensor_slices(batch).batch(per_replica).repeat()

  return fn


def _model():
  model = tf_keras.Sequential([
      tf_keras.layers.Conv2D(2, 3, padding="same",
                             kernel_initializer=tf_keras.initializers.GlorotUniform(seed=1)),
  ])
  model.build((None, 4, 4, 3))
  return model


def _mse_losses(batch, outputs):
  per_example = tf.reduce_mean(tf.square(outputs - batch["target"]), axis=[1, 2, 3])
  total = tf.nn.compute_average_loss(per_example, global_batch_size=_GLOBAL_BATCH)
  return {"total": total, "mse": total}


def _trainer(strategy, model_dir, compute_losses=_mse_losses, total_steps=6, **kwargs):
  with strategy.scope():
    model = _model()
    optimizer = tf_keras.optimizers.SGD(0.1)
  return loop.Trainer(strategy=strategy, model=model, optimizer=optimizer,
                      compute_losses=compute_losses, loss_names=("total", "mse"),
                      train_dataset_fn=_dataset_fn(_global_batch()),
                      global_batch_size=_GLOBAL_BATCH, total_steps=total_steps,
                      model_dir=str(model_dir), summary_interval=1, log_fn=lambda _: None,
                      **kwargs), model


def _numpy_loss(model, batch):
  out = model(batch["image"]).numpy()
  return float(np.mean((out - batch["target"]) ** 2))


def test_loss_decreases_and_checkpoint_is_written(tmp_path):
  trainer, model = _trainer(tf.distribute.get_strategy(), tmp_path, checkpoint_interval=2,
                            steps_per_loop=2)
  batch = _global_batch()
  before = _numpy_loss(model, batch)
  assert trainer.train() == 6
  assert _numpy_loss(model, batch) < before
  assert trainer.checkpoint_manager.latest_checkpoint.endswith("ckpt-6")
  assert tf.io.gfile.glob(str(tmp_path / "train" / "events.out.tfevents.*"))


def test_resume_continues_from_saved_step_with_same_weights(tmp_path):
  first, model = _trainer(tf.distribute.get_strategy(), tmp_path, total_steps=6,
                          checkpoint_interval=1)
  first.train(until_step=3)
  weights_at_3 = [w.numpy() for w in model.weights]
  resumed, model2 = _trainer(tf.distribute.get_strategy(), tmp_path, total_steps=6)
  assert resumed.restore_or_initialize() is not None
  assert resumed.global_step == 3
  for a, b in zip(weights_at_3, model2.weights):
    np.testing.assert_array_equal(a, b.numpy())
  assert resumed.train() == 6


def test_uninterrupted_equals_interrupted_and_resumed(tmp_path):
  straight, model_a = _trainer(tf.distribute.get_strategy(), tmp_path / "a")
  straight.train()
  part, _ = _trainer(tf.distribute.get_strategy(), tmp_path / "b", checkpoint_interval=1)
  part.train(until_step=2)
  rest, model_b = _trainer(tf.distribute.get_strategy(), tmp_path / "b")
  rest.restore_or_initialize()
  rest.train()
  for a, b in zip(model_a.weights, model_b.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_two_replicas_match_one_device(tmp_path, two_cpu_strategy):
  single, model_1 = _trainer(tf.distribute.get_strategy(), tmp_path / "one", total_steps=3)
  single.train()
  mirrored, model_2 = _trainer(two_cpu_strategy, tmp_path / "two", total_steps=3)
  mirrored.train()
  for a, b in zip(model_1.weights, model_2.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_with_step_and_part_and_keeps_last_good_checkpoint(tmp_path):

  def losses_nan_from_step_3(batch, outputs):
    losses = _mse_losses(batch, outputs)
    step = tf.cast(trainer_ref[0]._global_step, tf.float32)  # pylint: disable=protected-access
    poisoned = tf.where(step >= 2.0, np.float32(np.nan), losses["mse"])
    return {"total": poisoned, "mse": losses["mse"]}

  trainer_ref = []
  trainer, _ = _trainer(tf.distribute.get_strategy(), tmp_path, total_steps=6,
                        compute_losses=losses_nan_from_step_3, checkpoint_interval=1)
  trainer_ref.append(trainer)
  with pytest.raises(loop.TrainingDivergedError, match=r"total loss is nan at step 3"):
    trainer.train()
  assert trainer.checkpoint_manager.latest_checkpoint.endswith("ckpt-2")


def test_batch_not_divisible_by_replicas_is_rejected(tmp_path, two_cpu_strategy):
  with two_cpu_strategy.scope():
    model = _model()
  with pytest.raises(ValueError, match="batch size 3 is not divisible"):
    loop.Trainer(strategy=two_cpu_strategy, model=model, optimizer=tf_keras.optimizers.SGD(),
                 compute_losses=_mse_losses, loss_names=("total",),
                 train_dataset_fn=_dataset_fn(_global_batch()), global_batch_size=3,
                 total_steps=1, model_dir=str(tmp_path))


def test_progress_line_reports_step_loss_throughput_and_eta():
  lines = []
  progress = loop.ProgressReporter(total_steps=100, global_batch_size=8, log_fn=lines.append)
  progress.start(0)
  progress.report(10, {"total": 1.5, "semantic": 1.0})
  assert lines[0].startswith("step 10/100 (10.0%) | loss 1.5000 (semantic 1.0000)")
  assert "img/s" in lines[0] and "ETA 0:" in lines[0]
  assert progress_lib.format_duration(3725) == "1:02:05"
  assert progress_lib.format_duration(float("inf")) == "--:--:--"
