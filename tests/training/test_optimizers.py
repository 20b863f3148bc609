"""Optimizers and schedules against NumPy implementations of the published update rules."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import config as config_lib
from deeplab_axial.training import optimizers

# A small ill-conditioned quadratic: f(θ) = ½ Σ a_i (θ_i − c_i)², ∇f = a (θ − c).
_CURVATURE = np.array([1.0, 4.0, 0.25, 2.0], np.float32)
_OPTIMUM = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
_START = np.array([1.5, 1.0, -1.0, 0.3], np.float32)


def _quadratic_grad(theta):
  return _CURVATURE * (theta - _OPTIMUM)


# ------------------------------- NumPy references ------------------------------------


class NumpyRAdam:
  """Liu et al. 2020, Algorithm 2, with ε added to √v̂, decoupled decay and TF-Addons warm-up."""

  def __init__(self, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, threshold=5.0,
               weight_decay=0.0, total_steps=0, warmup_proportion=0.1, min_lr=0.0):
    self.lr, self.b1, self.b2, self.eps = lr, beta_1, beta_2, epsilon
    self.threshold, self.wd = threshold, weight_decay
    self.total_steps, self.warmup_proportion, self.min_lr = total_steps, warmup_proportion, min_lr
    self.m = self.v = 0.0
    self.t = 0
    self.rhos = []

  def _lr(self):
    if self.total_steps <= 0:
      return self.lr
    warmup = self.total_steps * self.warmup_proportion
    if self.t <= warmup:
      return self.lr * self.t / warmup
    decay_steps = self.total_steps - warmup
    return self.lr + (self.min_lr - self.lr) * min(self.t - warmup, decay_steps) / decay_steps

  def step(self, theta, grad):
    self.t += 1
    t, b1, b2 = self.t, self.b1, self.b2
    self.m = b1 * self.m + (1 - b1) * grad
    self.v = b2 * self.v + (1 - b2) * grad ** 2
    m_hat = self.m / (1 - b1 ** t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    self.rhos.append(rho_t)
    if rho_t > self.threshold:
      r_t = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf /
                      ((rho_inf - 4) * (rho_inf - 2) * rho_t))
      direction = r_t * m_hat / (np.sqrt(self.v / (1 - b2 ** t)) + self.eps)
    else:
      direction = m_hat
    return theta - self._lr() * (direction + self.wd * theta)


class NumpySGD:

  def __init__(self, lr):
    self.lr = lr

  def step(self, theta, grad):
    return theta - self.lr * grad


class NumpyLookahead:
  """Zhang et al. 2019, Algorithm 1."""

  def __init__(self, inner, k, alpha, theta0):
    self.inner, self.k, self.alpha = inner, k, alpha
    self.slow = np.array(theta0, np.float64)
    self.t = 0

  def step(self, theta, grad):
    theta = self.inner.step(theta, grad)
    self.t += 1
    if self.t % self.k == 0:
      self.slow = self.slow + self.alpha * (theta - self.slow)
      theta = self.slow.copy()
    return theta


def _numpy_trajectory(reference, steps, start=_START):
  theta = start.astype(np.float64)
  trajectory = []
  for _ in range(steps):
    theta = reference.step(theta, _quadratic_grad(theta))
    trajectory.append(theta.copy())
  return np.stack(trajectory)


# ------------------------------- TF helpers ------------------------------------------


def _train(optimizer, variable, steps):
  """Runs `steps` tf.function steps on the quadratic; returns the trajectory."""

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = 0.5 * tf.reduce_sum(_CURVATURE * tf.square(variable - _OPTIMUM))
    optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])

  trajectory = []
  for _ in range(steps):
    step()
    trajectory.append(variable.numpy().copy())
  return np.stack(trajectory)


# ------------------------------- RAdam -----------------------------------------------


@pytest.mark.parametrize("threshold", [5.0, 4.0])
def test_radam_matches_paper_update_over_50_steps(threshold):
  reference = NumpyRAdam(lr=0.05, threshold=threshold)
  expected = _numpy_trajectory(reference, 50)
  # The run covers both regimes: momentum-only steps, then rectified adaptive steps.
  assert min(reference.rhos) < threshold < max(reference.rhos)
  variable = tf.Variable(_START)
  actual = _train(optimizers.RectifiedAdam(0.05, sma_threshold=threshold), variable, 50)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_radam_several_variables_and_steps_in_one_graph_match_the_paper_update():
  # The step's coefficients are shared by the variables of one apply; a second apply in
  # the same graph must use the next step's (t + 1), not the first apply's.
  halves = [tf.Variable(_START[:2]), tf.Variable(_START[2:])]
  optimizer = optimizers.RectifiedAdam(0.05, weight_decay=0.1)
  steps_per_call, calls = 3, 4

  @tf.function
  def several_steps():
    for _ in range(steps_per_call):
      theta = tf.concat(halves, 0)
      gradient = _CURVATURE * (theta - _OPTIMUM)
      optimizer.apply_gradients(zip(tf.split(gradient, 2), halves))

  trajectory = []
  for _ in range(calls):
    several_steps()
    trajectory.append(tf.concat(halves, 0).numpy())
  expected = _numpy_trajectory(NumpyRAdam(lr=0.05, weight_decay=0.1),
                               steps_per_call * calls)[steps_per_call - 1::steps_per_call]
  np.testing.assert_allclose(np.stack(trajectory), expected, rtol=1e-4, atol=1e-5)


def test_radam_switch_over_step_is_the_first_with_rho_above_threshold():
  # ρ_t (β2 = 0.999) = 1.0, 2.0, 3.0, 4.0, 4.996, 5.994, ...: steps 1-5 are plain momentum
  # steps of size lr·m̂ (= lr·g for a constant gradient), step 6 is the first adaptive one.
  variable = tf.Variable([0.0])
  optimizer = optimizers.RectifiedAdam(0.1)
  for step in range(1, 7):
    before = variable.numpy()[0]
    optimizer.apply_gradients([(tf.constant([2.0]), variable)])
    moved = before - variable.numpy()[0]
    if step <= 5:
      np.testing.assert_allclose(moved, 0.1 * 2.0, rtol=1e-5)
    else:
      rho_inf = 2 / 0.001 - 1
      rho = rho_inf - 2 * 6 * 0.999 ** 6 / (1 - 0.999 ** 6)
      r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
      np.testing.assert_allclose(moved, 0.1 * r, rtol=1e-4)  # m̂/√v̂ = 1 for constant g


def test_radam_warmup_and_decoupled_weight_decay():
  reference = NumpyRAdam(lr=0.05, beta_2=0.99, weight_decay=0.1, total_steps=40,
                         warmup_proportion=0.25, min_lr=0.005)
  expected = _numpy_trajectory(reference, 50)
  variable = tf.Variable(_START)
  optimizer = optimizers.RectifiedAdam(0.05, beta_2=0.99, weight_decay=0.1, total_steps=40,
                                       warmup_proportion=0.25, min_learning_rate=0.005)
  np.testing.assert_allclose(_train(optimizer, variable, 50), expected, rtol=1e-4, atol=1e-5)


def test_radam_excluded_variables_are_not_decayed():
  decayed, excluded = tf.Variable([1.0], name="kernel"), tf.Variable([1.0], name="bias")
  optimizer = optimizers.RectifiedAdam(0.1, weight_decay=0.5)
  optimizer.exclude_from_weight_decay(var_names=["bias"])
  optimizer.apply_gradients([(tf.constant([0.0]), decayed), (tf.constant([0.0]), excluded)])
  np.testing.assert_allclose(decayed.numpy(), [1.0 - 0.1 * 0.5], rtol=1e-6)
  np.testing.assert_allclose(excluded.numpy(), [1.0])


def test_radam_sparse_gradient_equals_dense():
  dense_var, sparse_var = tf.Variable(_START), tf.Variable(_START)
  dense_opt, sparse_opt = optimizers.RectifiedAdam(0.1), optimizers.RectifiedAdam(0.1)
  for _ in range(8):
    grad = _quadratic_grad(dense_var.numpy())
    dense_opt.apply_gradients([(tf.constant(grad), dense_var)])
    grad = _quadratic_grad(sparse_var.numpy())
    slices = tf.IndexedSlices(tf.constant(grad[[0, 2, 1, 3]]), tf.constant([0, 2, 1, 3]),
                              tf.constant([4]))
    sparse_opt.apply_gradients([(slices, sparse_var)])
  np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), rtol=1e-6)


def test_radam_update_compiles_with_xla():
  variable = tf.Variable(_START)
  optimizer = optimizers.RectifiedAdam(0.05)
  optimizer.build([variable])

  @tf.function(jit_compile=True)
  def step(grad):
    optimizer.apply_gradients([(grad, variable)])

  reference = NumpyRAdam(lr=0.05)
  theta = _START.astype(np.float64)
  for _ in range(8):
    grad = _quadratic_grad(variable.numpy())
    step(tf.constant(grad))
    theta = reference.step(theta, grad)
  np.testing.assert_allclose(variable.numpy(), theta, rtol=1e-4, atol=1e-6)


# ------------------------------- Lookahead -------------------------------------------


def test_lookahead_synchronizes_at_k_and_2k():
  k, alpha, lr = 3, 0.5, 0.1
  variable = tf.Variable(_START)
  optimizer = optimizers.Lookahead(tf_keras.optimizers.SGD(lr), sync_period=k,
                                   slow_step_size=alpha)
  theta = _START.astype(np.float64)
  fast = []
  for _ in range(2 * k):  # plain SGD fast weights, by hand
    theta = theta - lr * _quadratic_grad(theta)
    fast.append(theta)
  trajectory = _train(optimizer, variable, 2 * k)
  np.testing.assert_allclose(trajectory[k - 2], fast[k - 2], rtol=1e-6)  # no sync before k
  slow_k = _START + alpha * (fast[k - 1] - _START)
  np.testing.assert_allclose(trajectory[k - 1], slow_k, rtol=1e-5)  # fast ← slow at k
  theta = slow_k
  for _ in range(k):
    theta = theta - lr * _quadratic_grad(theta)
  slow_2k = slow_k + alpha * (theta - slow_k)
  np.testing.assert_allclose(trajectory[2 * k - 1], slow_2k, rtol=1e-5)
  np.testing.assert_allclose(optimizer._slow_weight(variable).numpy(), slow_2k, rtol=1e-5)


def test_lookahead_radam_matches_numpy_over_30_steps():
  reference = NumpyLookahead(NumpyRAdam(lr=0.05), k=6, alpha=0.5, theta0=_START)
  expected = _numpy_trajectory(reference, 30)
  variable = tf.Variable(_START)
  optimizer = optimizers.Lookahead(optimizers.RectifiedAdam(0.05))
  np.testing.assert_allclose(_train(optimizer, variable, 30), expected, rtol=1e-4, atol=1e-5)


def test_lookahead_slow_weights_follow_weights_restored_after_build():
  # E.g. a pretrained backbone loaded after the optimizer was built: the first period must
  # start from the loaded weights, not from the values at build time.
  variable = tf.Variable(np.zeros(4, np.float32))
  optimizer = optimizers.Lookahead(tf_keras.optimizers.SGD(0.1), sync_period=2)
  optimizer.build([variable])
  variable.assign(_START)
  reference = NumpyLookahead(NumpySGD(0.1), k=2, alpha=0.5, theta0=_START)
  np.testing.assert_allclose(_train(optimizer, variable, 4), _numpy_trajectory(reference, 4),
                             rtol=1e-5)


def _make(sync_period=4):
  variable = tf.Variable(_START)
  schedule = optimizers.LinearWarmup(optimizers.PolyLearningRate(0.05, 20), 3)
  return variable, optimizers.Lookahead(optimizers.RectifiedAdam(schedule),
                                        sync_period=sync_period)


def test_checkpoint_restore_mid_period_continues_identically(tmp_path):
  full_variable, full_optimizer = _make()
  uninterrupted = _train(full_optimizer, full_variable, 14)

  variable, optimizer = _make()
  _train(optimizer, variable, 6)  # mid-period: 6 % 4 != 0
  path = tf.train.Checkpoint(v=variable, optimizer=optimizer).save(str(tmp_path / "ckpt"))

  restored_variable, restored_optimizer = _make()
  # Restored before the optimizer is built, as the training loop does on resume.
  tf.train.Checkpoint(v=restored_variable, optimizer=restored_optimizer).restore(
      path).assert_existing_objects_matched()
  resumed = _train(restored_optimizer, restored_variable, 8)
  assert int(restored_optimizer.iterations.numpy()) == 14
  np.testing.assert_allclose(resumed, uninterrupted[6:], rtol=1e-6)
  np.testing.assert_allclose(restored_optimizer._slow_weight(restored_variable).numpy(),
                             full_optimizer._slow_weight(full_variable).numpy(), rtol=1e-6)
  inner_slots = restored_optimizer.optimizer._velocities[0].numpy()
  np.testing.assert_allclose(inner_slots, full_optimizer.optimizer._velocities[0].numpy(),
                             rtol=1e-6)


def test_distributed_equals_single_device(two_cpu_strategy):
  targets = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 0.0, 1.0, 1.0],
                      [-0.5, 2.0, 0.0, 1.0], [0.0, 0.0, -1.0, 2.0]], np.float32)

  def run(strategy, steps=10):
    with strategy.scope():
      variable = tf.Variable(_START)
      optimizer = optimizers.Lookahead(optimizers.RectifiedAdam(0.05), sync_period=3)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(targets).repeat())

    def replica_step(batch):
      with tf.GradientTape() as tape:
        per_example = 0.5 * tf.reduce_sum(_CURVATURE * tf.square(variable - batch), axis=1)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=len(targets))
      optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])

    @tf.function
    def step(batch):
      strategy.run(replica_step, args=(batch,))

    iterator = iter(dataset)
    for _ in range(steps):
      step(next(iterator))
    return variable, optimizer

  single, single_optimizer = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
  mirrored, optimizer = run(two_cpu_strategy)
  single_slow = single_optimizer._slow_weight(single).numpy()
  for fast, slow in zip(mirrored.values, optimizer._slow_weight(mirrored).values):
    np.testing.assert_allclose(fast.numpy(), single.numpy(), rtol=1e-5)
    np.testing.assert_allclose(slow.numpy(), single_slow, rtol=1e-5)


def test_loss_scale_optimizer_around_lookahead_skips_non_finite_steps():
  variable = tf.Variable(_START)
  optimizer = tf_keras.mixed_precision.LossScaleOptimizer(
      optimizers.Lookahead(tf_keras.optimizers.SGD(0.1), sync_period=2))
  optimizer.apply_gradients([(tf.constant([np.inf, 0, 0, 0], tf.float32), variable)])
  np.testing.assert_array_equal(variable.numpy(), _START)  # skipped, but counted as a step
  assert int(optimizer.iterations.numpy()) == 1
  grad = _quadratic_grad(_START)
  optimizer.apply_gradients([(tf.constant(grad), variable)])  # step 2: period ends
  fast = _START - 0.1 * grad
  np.testing.assert_allclose(variable.numpy(), _START + 0.5 * (fast - _START), rtol=1e-6)


def test_loss_scale_optimizer_with_fixed_scale_matches_unscaled():
  variable, plain = tf.Variable(_START), tf.Variable(_START)
  scaled_opt = tf_keras.mixed_precision.LossScaleOptimizer(
      optimizers.Lookahead(optimizers.RectifiedAdam(0.05), sync_period=3), dynamic=False,
      initial_scale=64.0)
  plain_opt = optimizers.Lookahead(optimizers.RectifiedAdam(0.05), sync_period=3)
  for _ in range(7):
    with tf.GradientTape() as tape:
      loss = 0.5 * tf.reduce_sum(_CURVATURE * tf.square(variable - _OPTIMUM))
      scaled = scaled_opt.get_scaled_loss(loss)
    grads = scaled_opt.get_unscaled_gradients(tape.gradient(scaled, [variable]))
    scaled_opt.apply_gradients(zip(grads, [variable]))
    plain_opt.apply_gradients([(tf.constant(_quadratic_grad(plain.numpy())), plain)])
  np.testing.assert_allclose(variable.numpy(), plain.numpy(), rtol=1e-5)


def test_optimizers_round_trip_through_get_config():
  schedule = optimizers.LinearWarmup(optimizers.CosineLearningRate(0.1, 100, 0.001), 10, 0.1)
  original = optimizers.Lookahead(
      optimizers.RectifiedAdam(schedule, beta_2=0.99, sma_threshold=4.0, weight_decay=0.01),
      sync_period=5, slow_step_size=0.8)
  restored = tf_keras.optimizers.deserialize(tf_keras.optimizers.serialize(original),
                                             use_legacy_optimizer=False)
  assert isinstance(restored, optimizers.Lookahead)
  assert (restored.sync_period, restored.slow_step_size) == (5, 0.8)
  inner = restored.optimizer
  assert isinstance(inner, optimizers.RectifiedAdam)
  assert (inner.beta_2, inner.sma_threshold, inner.weight_decay) == (0.99, 4.0, 0.01)
  steps = tf.constant([0, 5, 50, 100])
  np.testing.assert_allclose(inner._learning_rate(steps).numpy(), schedule(steps).numpy())


def test_lookahead_rejects_bad_arguments():
  with pytest.raises(ValueError, match="sync_period"):
    optimizers.Lookahead(tf_keras.optimizers.SGD(), sync_period=0)
  with pytest.raises(ValueError, match="new-style"):
    optimizers.Lookahead(tf_keras.optimizers.legacy.SGD())


# ------------------------------- Schedules -------------------------------------------

_STEPS = np.array([0, 1, 10, 37, 99, 100, 150])


def _evaluate(schedule):
  return np.array([float(schedule(tf.constant(s))) for s in _STEPS])


def test_poly_cosine_step_constant_match_closed_forms():
  base, end, total = 0.1, 0.001, 100
  progress = np.minimum(_STEPS, total) / total
  np.testing.assert_allclose(_evaluate(optimizers.PolyLearningRate(base, total, 0.9, end)),
                             (base - end) * (1 - progress) ** 0.9 + end, rtol=1e-5)
  np.testing.assert_allclose(_evaluate(optimizers.CosineLearningRate(base, total, end)),
                             end + (base - end) * 0.5 * (1 + np.cos(np.pi * progress)),
                             rtol=1e-5)
  np.testing.assert_allclose(
      _evaluate(optimizers.StepLearningRate(base, [10, 99], [0.01, 0.001])),
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001], rtol=1e-6)
  np.testing.assert_allclose(_evaluate(optimizers.ConstantLearningRate(base)), base)


def test_linear_warmup_ramps_to_the_schedule_value_at_its_end():
  poly = optimizers.PolyLearningRate(0.1, 100, 0.9)
  warm = optimizers.LinearWarmup(poly, warmup_steps=20, start_factor=0.1)
  target = 0.1 * (1 - 20 / 100) ** 0.9
  expected = [target * (0.1 + 0.9 * s / 20) if s < 20 else
              0.1 * (1 - min(s, 100) / 100) ** 0.9 for s in _STEPS]
  np.testing.assert_allclose(_evaluate(warm), expected, rtol=1e-5)


@pytest.mark.parametrize("schedule", [
    optimizers.ConstantLearningRate(0.5),
    optimizers.PolyLearningRate(0.1, 50, 2.0, 0.01),
    optimizers.CosineLearningRate(0.1, 50, 0.0),
    optimizers.StepLearningRate(0.1, [5, 20], [0.05, 0.01]),
    optimizers.LinearWarmup(optimizers.StepLearningRate(0.1, [30], [0.01]), 10),
])
def test_schedules_round_trip_through_get_config(schedule):
  restored = tf_keras.optimizers.schedules.deserialize(
      tf_keras.optimizers.schedules.serialize(schedule))
  assert type(restored) is type(schedule)
  np.testing.assert_allclose(_evaluate(restored), _evaluate(schedule))


def test_step_schedule_rejects_mismatched_lengths():
  with pytest.raises(ValueError, match="same length"):
    optimizers.StepLearningRate(0.1, [10, 20], [0.01])


# ------------------------------- GroupedOptimizer ------------------------------------
# Two variables: "head" (the first two coordinates of the quadratic) and "backbone" (the
# last two), the backbone at a tenth of the learning rate.


def _grouped(make_optimizer, clipnorm=None):
  head, backbone = tf.Variable(_START[:2]), tf.Variable(_START[2:])
  optimizer = optimizers.GroupedOptimizer(make_optimizer(0.1), make_optimizer(0.01),
                                          [backbone], global_clipnorm=clipnorm)
  return head, backbone, optimizer


def _grouped_gradients(head, backbone, scale=1.0):
  gradient = scale * _quadratic_grad(np.concatenate([head.numpy(), backbone.numpy()]))
  return [(tf.constant(gradient[:2]), head), (tf.constant(gradient[2:]), backbone)]


def test_grouped_sgd_momentum_with_global_clipping_matches_numpy():
  head, backbone, optimizer = _grouped(
      lambda lr: tf_keras.optimizers.SGD(lr, momentum=0.9), clipnorm=1.0)
  theta, velocity = _START.astype(np.float64), np.zeros(4)
  rates = np.array([0.1, 0.1, 0.01, 0.01])
  for _ in range(12):
    # Gradients 5x larger than the quadratic's so that clipping is active.
    optimizer.apply_gradients(_grouped_gradients(head, backbone, scale=5.0))
    gradient = 5.0 * _CURVATURE * (theta - _OPTIMUM)
    gradient *= min(1.0, 1.0 / np.linalg.norm(gradient))  # one norm over both groups
    velocity = 0.9 * velocity - rates * gradient
    theta = theta + velocity
  np.testing.assert_allclose(np.concatenate([head.numpy(), backbone.numpy()]), theta,
                             rtol=1e-5)
  assert int(optimizer.iterations.numpy()) == 12
  assert int(optimizer.group_optimizer.iterations.numpy()) == 12


def test_grouped_lookahead_radam_equals_two_separate_optimizers():
  def make(lr):
    return optimizers.Lookahead(optimizers.RectifiedAdam(lr), sync_period=3)

  head, backbone, optimizer = _grouped(make)
  separate_head, separate_backbone = tf.Variable(_START[:2]), tf.Variable(_START[2:])
  head_optimizer, backbone_optimizer = make(0.1), make(0.01)
  for _ in range(10):
    optimizer.apply_gradients(_grouped_gradients(head, backbone))
    (head_grad, _), (backbone_grad, _) = _grouped_gradients(separate_head, separate_backbone)
    head_optimizer.apply_gradients([(head_grad, separate_head)])
    backbone_optimizer.apply_gradients([(backbone_grad, separate_backbone)])
  np.testing.assert_allclose(head.numpy(), separate_head.numpy(), rtol=1e-6)
  np.testing.assert_allclose(backbone.numpy(), separate_backbone.numpy(), rtol=1e-6)
  assert not np.allclose(backbone.numpy(), _START[2:])


def test_grouped_checkpoint_restore_continues_identically(tmp_path):
  def make(lr):
    return optimizers.Lookahead(optimizers.RectifiedAdam(lr), sync_period=4)

  full_head, full_backbone, full_optimizer = _grouped(make)
  for _ in range(9):
    full_optimizer.apply_gradients(_grouped_gradients(full_head, full_backbone))
  head, backbone, optimizer = _grouped(make)
  for _ in range(5):
    optimizer.apply_gradients(_grouped_gradients(head, backbone))
  path = tf.train.Checkpoint(h=head, b=backbone, optimizer=optimizer).save(
      str(tmp_path / "ckpt"))
  restored_head, restored_backbone, restored = _grouped(make)
  tf.train.Checkpoint(h=restored_head, b=restored_backbone, optimizer=restored).restore(
      path).assert_existing_objects_matched()
  for _ in range(4):
    restored.apply_gradients(_grouped_gradients(restored_head, restored_backbone))
  np.testing.assert_allclose(restored_head.numpy(), full_head.numpy(), rtol=1e-6)
  np.testing.assert_allclose(restored_backbone.numpy(), full_backbone.numpy(), rtol=1e-6)
  assert int(restored.group_optimizer.iterations.numpy()) == 9


def test_grouped_distributed_equals_single_device(two_cpu_strategy):
  def run(strategy, steps=6):
    with strategy.scope():
      head, backbone, optimizer = _grouped(
          lambda lr: optimizers.Lookahead(optimizers.RectifiedAdam(lr), sync_period=2),
          clipnorm=0.5)

    def replica_step():
      with tf.GradientTape() as tape:
        theta = tf.concat([head, backbone], 0)
        loss = 0.5 * tf.reduce_sum(_CURVATURE * tf.square(theta - _OPTIMUM))
        # Each replica holds half of the global-batch loss.
        loss = loss / strategy.num_replicas_in_sync
      optimizer.apply_gradients(zip(tape.gradient(loss, [head, backbone]),
                                    [head, backbone]))

    @tf.function
    def step():
      strategy.run(replica_step)

    for _ in range(steps):
      step()
    return head, backbone

  single = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
  mirrored = run(two_cpu_strategy)
  for expected, variable in zip(single, mirrored):
    for value in variable.values:
      np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=1e-5)


def test_loss_scale_optimizer_around_grouped_skips_non_finite_steps():
  head, backbone, grouped = _grouped(tf_keras.optimizers.SGD)
  optimizer = tf_keras.mixed_precision.LossScaleOptimizer(grouped)
  optimizer.apply_gradients([(tf.constant([np.nan, 0.0]), head),
                             (tf.constant([1.0, 1.0]), backbone)])
  np.testing.assert_array_equal(head.numpy(), _START[:2])
  np.testing.assert_array_equal(backbone.numpy(), _START[2:])
  optimizer.apply_gradients([(tf.constant([1.0, 1.0]), head),
                             (tf.constant([1.0, 1.0]), backbone)])
  np.testing.assert_allclose(head.numpy(), _START[:2] - 0.1, rtol=1e-6)
  np.testing.assert_allclose(backbone.numpy(), _START[2:] - 0.01, rtol=1e-6)


def test_grouped_rejects_legacy_optimizers():
  with pytest.raises(ValueError, match="group_optimizer must be a new-style"):
    optimizers.GroupedOptimizer(tf_keras.optimizers.SGD(0.1),
                                tf_keras.optimizers.legacy.SGD(0.1), [])


# ------------------------------- build_optimizer -------------------------------------


def _solver(text):
  return config_lib.parse_config(
      'dataset { name: "shapes" crop_size: [65, 65] } train { steps: 1000 } solver { ' +
      text + " }").solver


def test_build_optimizer_radam_lookahead_with_warmup():
  optimizer, schedule = optimizers.build_optimizer(_solver(
      'optimizer: "radam" learning_rate: 0.001 lookahead { enable: true sync_period: 5 } '
      'schedule: "poly" warmup_steps: 100 radam_sma_threshold: 4 clip_gradient_norm: 1.0'),
      total_steps=1000)
  assert isinstance(optimizer, optimizers.Lookahead) and optimizer.sync_period == 5
  assert isinstance(optimizer.optimizer, optimizers.RectifiedAdam)
  assert optimizer.optimizer.sma_threshold == 4.0
  assert optimizer.optimizer.global_clipnorm == 1.0
  assert isinstance(schedule, optimizers.LinearWarmup)
  np.testing.assert_allclose(float(schedule(1000)), 0.0, atol=1e-9)
  np.testing.assert_allclose(float(schedule(50)), 0.5 * 0.001 * 0.9 ** 0.9, rtol=1e-5)


def test_build_optimizer_sgd_adamw_and_multiplier():
  sgd, schedule = optimizers.build_optimizer(
      _solver('optimizer: "sgd" momentum: 0.8 nesterov: true schedule: "cosine" '
              'learning_rate: 0.4 weight_decay: 0.0008'), total_steps=1000,
      learning_rate_multiplier=0.1)
  assert isinstance(sgd, tf_keras.optimizers.SGD) and sgd.nesterov
  assert sgd.momentum == pytest.approx(0.8)
  assert sgd.weight_decay == pytest.approx(0.0008)
  np.testing.assert_allclose(float(schedule(0)), 0.04, rtol=1e-6)
  adamw, _ = optimizers.build_optimizer(
      _solver('optimizer: "adamw" weight_decay: 0.05 weight_decay_exclude: ["bias"] '
              'schedule: "step" step_boundaries: [500] step_learning_rates: [0.0001]'),
      total_steps=1000)
  assert isinstance(adamw, tf_keras.optimizers.AdamW)
  assert adamw.weight_decay == pytest.approx(0.05)
  assert not adamw._use_weight_decay(tf.Variable(1.0, name="dense/bias"))
  adam, _ = optimizers.build_optimizer(_solver('optimizer: "adam"'), total_steps=10)
  assert type(adam) is tf_keras.optimizers.Adam and adam.weight_decay is None


def test_build_optimizer_backbone_multiplier_groups_the_backbone():
  solver = _solver('optimizer: "radam" learning_rate: 0.001 schedule: "poly" '
                   'warmup_steps: 10 lookahead { enable: true } clip_gradient_norm: 2.0 '
                   'backbone_learning_rate_multiplier: 0.1')
  backbone, head = tf.Variable([1.0]), tf.Variable([2.0])
  optimizer, schedule = optimizers.build_optimizer(solver, total_steps=1000,
                                                   backbone_variables=[backbone])
  assert isinstance(optimizer, optimizers.GroupedOptimizer)
  assert optimizer.clip_all_norm == 2.0
  for part in (optimizer.optimizer, optimizer.group_optimizer):
    assert isinstance(part, optimizers.Lookahead)
    assert isinstance(part.optimizer, optimizers.RectifiedAdam)
    assert part.optimizer.global_clipnorm is None  # clipped once, over both groups
  for step in (0, 5, 10, 500):
    np.testing.assert_allclose(float(optimizer.group_optimizer.optimizer._learning_rate(step)),
                               0.1 * float(schedule(step)), rtol=1e-6)
  optimizer.build([head, backbone])
  assert optimizer.optimizer.optimizer._index_dict.keys() == {optimizer._var_key(head)}
  with pytest.raises(ValueError, match="needs the backbone_variables"):
    optimizers.build_optimizer(solver, total_steps=1000)
