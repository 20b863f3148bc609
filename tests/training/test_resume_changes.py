"""Resuming a checkpoint after the run's setup changed: replica count, backbone multiplier.

The optimizer is the demo recipe's Lookahead(RAdam) so that every kind of optimizer state
(RAdam moments, Lookahead slow weights, step count) must survive the change. States are
read back through the optimizers' own per-variable indices, not through the code under
test.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial.protos import experiment_pb2
from deeplab_axial.training import loop
from deeplab_axial.training import optimizers

_GLOBAL_BATCH = 4
_TOTAL_STEPS = 8


def _dataset_fn(ctx):
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(_GLOBAL_BATCH, 4, 4, 3)).astype(np.float32),
           "target": rng.normal(size=(_GLOBAL_BATCH, 4, 4, 2)).astype(np.float32)}
  per_replica = ctx.get_per_replica_batch_size(_GLOBAL_BATCH)
  return tf.data.Dataset.from_tensor_slices(batch).batch(per_replica).repeat()


def _model():
  """Conv "backbone" submodel + conv head; returns (model, backbone)."""
  initializer = tf_keras.initializers.GlorotUniform(seed=1)
  backbone = tf_keras.Sequential([tf_keras.layers.Conv2D(
      3, 3, padding="same", kernel_initializer=initializer)], name="backbone")
  images = tf_keras.Input((4, 4, 3))
  outputs = tf_keras.layers.Conv2D(2, 1, kernel_initializer=initializer)(backbone(images))
  return tf_keras.Model(images, outputs), backbone


def _mse_losses(batch, outputs):
  per_example = tf.reduce_mean(tf.square(outputs - batch["target"]), axis=[1, 2, 3])
  return {"total": tf.nn.compute_average_loss(per_example, global_batch_size=_GLOBAL_BATCH)}


def _solver(backbone_multiplier, lookahead=True):
  solver = experiment_pb2.SolverOptions(
      optimizer="radam", learning_rate=0.01, schedule="constant",
      backbone_learning_rate_multiplier=backbone_multiplier)
  solver.lookahead.enable = lookahead
  solver.lookahead.sync_period = 3
  return solver


def _trainer(strategy, model_dir, solver):
  with strategy.scope():
    model, backbone = _model()
    optimizer, _ = optimizers.build_optimizer(solver, _TOTAL_STEPS,
                                              backbone_variables=backbone.trainable_variables)
  return loop.Trainer(
      strategy=strategy, model=model, optimizer=optimizer, compute_losses=_mse_losses,
      loss_names=("total",), train_dataset_fn=_dataset_fn, global_batch_size=_GLOBAL_BATCH,
      total_steps=_TOTAL_STEPS, model_dir=str(model_dir), summary_interval=100,
      optimizer_group_variables=backbone.trainable_variables, log_fn=lambda _: None), model


def _optimizer_state(trainer, model):
  """{(variable index, state): array} plus the step counters, for Lookahead(RAdam) alone or
  one per group of a GroupedOptimizer."""
  optimizer = trainer.optimizer
  lookaheads = ([optimizer.optimizer, optimizer.group_optimizer]
                if isinstance(optimizer, optimizers.GroupedOptimizer) else [optimizer])
  state = {"iterations": [int(la.iterations.numpy()) for la in lookaheads]}
  for index, variable in enumerate(model.trainable_variables):
    lookahead = next(la for la in lookaheads if la._var_key(variable) in la._index_dict)  # pylint: disable=protected-access
    radam = lookahead.optimizer
    position = radam._index_dict[radam._var_key(variable)]  # pylint: disable=protected-access
    state[(index, "slow")] = lookahead._slow_weight(variable).numpy()  # pylint: disable=protected-access
    state[(index, "m")] = radam._momentums[position].numpy()  # pylint: disable=protected-access
    state[(index, "v")] = radam._velocities[position].numpy()  # pylint: disable=protected-access
  return state


def _assert_same_state(saved, restored):
  assert len(set(saved["iterations"] + restored["iterations"])) == 1, (saved, restored)
  assert saved.keys() == restored.keys()
  for key in saved:
    if key != "iterations":
      np.testing.assert_array_equal(restored[key], saved[key], err_msg=str(key))


def _train_save_and_resume(model_dir, first, second):
  """Trains 4 steps (crossing a Lookahead sync) with `first` = (strategy, solver), then
  resumes with `second`; returns (state saved, state restored, trainer, resumed step)."""
  trainer, model = _trainer(*first[:1], model_dir, first[1])
  trainer.train(until_step=4)
  saved = _optimizer_state(trainer, model)
  assert min(np.abs(v).max() for k, v in saved.items() if k != "iterations") > 0
  resumed, resumed_model = _trainer(*second[:1], model_dir, second[1])
  assert resumed.restore_or_initialize() is not None
  return saved, _optimizer_state(resumed, resumed_model), resumed, resumed.global_step


@pytest.mark.parametrize("replicas", [(2, 1), (1, 2)], ids=["2_to_1", "1_to_2"])
def test_resume_with_another_replica_count_keeps_step_and_optimizer_state(
    tmp_path, two_cpu_strategy, replicas):
  strategies = {1: tf.distribute.get_strategy(), 2: two_cpu_strategy}
  saved, restored, resumed, step = _train_save_and_resume(
      tmp_path, (strategies[replicas[0]], _solver(1.0)),
      (strategies[replicas[1]], _solver(1.0)))
  assert step == 4
  _assert_same_state(saved, restored)
  assert resumed.train() == _TOTAL_STEPS


@pytest.mark.parametrize("multipliers", [(1.0, 0.1), (0.1, 1.0)],
                         ids=["one_to_grouped", "grouped_to_one"])
def test_resume_after_backbone_multiplier_change_keeps_optimizer_state(tmp_path, multipliers):
  strategy = tf.distribute.get_strategy()
  saved, restored, resumed, step = _train_save_and_resume(
      tmp_path, (strategy, _solver(multipliers[0])), (strategy, _solver(multipliers[1])))
  assert step == 4
  assert isinstance(resumed.optimizer, optimizers.GroupedOptimizer) == (multipliers[1] != 1)
  _assert_same_state(saved, restored)
  assert resumed.train() == _TOTAL_STEPS


def test_resume_after_backbone_multiplier_change_under_two_replicas(tmp_path,
                                                                    two_cpu_strategy):
  saved, restored, _, step = _train_save_and_resume(
      tmp_path, (two_cpu_strategy, _solver(1.0)), (two_cpu_strategy, _solver(0.1)))
  assert step == 4
  _assert_same_state(saved, restored)


def test_multiplier_change_with_lookahead_change_fails_naming_the_fields(tmp_path):
  strategy = tf.distribute.get_strategy()
  trainer, _ = _trainer(strategy, tmp_path, _solver(1.0))
  trainer.train(until_step=2)
  resumed, _ = _trainer(strategy, tmp_path, _solver(0.1, lookahead=False))
  with pytest.raises(ValueError, match="solver.backbone_learning_rate_multiplier") as error:
    resumed.restore_or_initialize()
  assert "solver.lookahead" in str(error.value) and "ckpt-2" in str(error.value)
