"""Optimizers and learning-rate schedules, and their construction from `SolverOptions`.

* `RectifiedAdam` (RAdam, Liu et al. 2020) and `Lookahead` (Zhang et al. 2019): the
  Axial-DeepLab panoptic recipe is `Lookahead(RectifiedAdam(...))` with linear warm-up
  (papers.md §4.2). Both are new-style `tf_keras.optimizers.Optimizer` subclasses, so they
  checkpoint with `tf.train.Checkpoint`, run under `tf.distribute` and can be wrapped in
  `tf_keras.mixed_precision.LossScaleOptimizer`. The supported nesting order is
  `LossScaleOptimizer(Lookahead(RectifiedAdam(...)))`.
* Schedules (`ConstantLearningRate`, `PolyLearningRate`, `CosineLearningRate`,
  `StepLearningRate`) are functions of the global step (the optimizer's `iterations`);
  `LinearWarmup` wraps any of them.
* `build_optimizer(solver_options, total_steps)` turns the config into an optimizer and
  its schedule.

Backbone learning-rate multiplier: scaling gradients is not equivalent to scaling the
learning rate for Adam-family optimizers (their update is invariant to gradient scale), so
`solver.backbone_learning_rate_multiplier` gives the backbone a *second* optimizer of the
same kind whose schedule is multiplied: `GroupedOptimizer` splits the variables by
identity, clips all gradients together and checkpoints both optimizers'
state. `build_optimizer(..., backbone_variables=...)` builds it. Changing the multiplier
between runs changes the checkpoint's structure (one optimizer <-> a `GroupedOptimizer`);
`restore_regrouped_state` carries the state across that change.
"""
import math
import types
from typing import NamedTuple, Sequence, Tuple

import tensorflow as tf
import tf_keras

_PACKAGE = "deeplab_axial"


def _as_float(step):
  return tf.cast(step, tf.float32)


# -------------------------------------------------------------------------------------
# Learning-rate schedules.
# -------------------------------------------------------------------------------------


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class ConstantLearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):
  """lr(step) = learning_rate."""

  def __init__(self, learning_rate: float):
    super().__init__()
    self.learning_rate = float(learning_rate)

  def __call__(self, step):
    del step
    return tf.constant(self.learning_rate, tf.float32)

  def get_config(self):
    return {"learning_rate": self.learning_rate}


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class PolyLearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):
  """DeepLab "poly": lr = (base − end)·(1 − min(step, decay_steps)/decay_steps)^power + end."""

  def __init__(self, learning_rate: float, decay_steps: int, power: float = 0.9,
               end_learning_rate: float = 0.0):
    super().__init__()
    if decay_steps <= 0:
      raise ValueError(f"decay_steps must be positive, got {decay_steps}")
    self.learning_rate = float(learning_rate)
    self.decay_steps = int(decay_steps)
    self.power = float(power)
    self.end_learning_rate = float(end_learning_rate)

  def __call__(self, step):
    progress = tf.minimum(_as_float(step), float(self.decay_steps)) / self.decay_steps
    return ((self.learning_rate - self.end_learning_rate) * tf.pow(1.0 - progress, self.power)
            + self.end_learning_rate)

  def get_config(self):
    return {"learning_rate": self.learning_rate, "decay_steps": self.decay_steps,
            "power": self.power, "end_learning_rate": self.end_learning_rate}


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class CosineLearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):
  """lr = end + (base − end)·(1 + cos(π·min(step, decay_steps)/decay_steps))/2."""

  def __init__(self, learning_rate: float, decay_steps: int, end_learning_rate: float = 0.0):
    super().__init__()
    if decay_steps <= 0:
      raise ValueError(f"decay_steps must be positive, got {decay_steps}")
    self.learning_rate = float(learning_rate)
    self.decay_steps = int(decay_steps)
    self.end_learning_rate = float(end_learning_rate)

  def __call__(self, step):
    progress = tf.minimum(_as_float(step), float(self.decay_steps)) / self.decay_steps
    cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
    return self.end_learning_rate + (self.learning_rate - self.end_learning_rate) * cosine

  def get_config(self):
    return {"learning_rate": self.learning_rate, "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate}


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class StepLearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Piecewise constant: `learning_rate` before `boundaries[0]`, then `rates[i]` from
  `boundaries[i]` (inclusive) on."""

  def __init__(self, learning_rate: float, boundaries: Sequence[int], rates: Sequence[float]):
    super().__init__()
    boundaries, rates = [int(b) for b in boundaries], [float(r) for r in rates]
    if len(boundaries) != len(rates):
      raise ValueError(f"boundaries {boundaries} and rates {rates} must have the same length")
    if any(b <= a for a, b in zip(boundaries, boundaries[1:])) or any(b < 0 for b in boundaries):
      raise ValueError(f"boundaries must be non-negative and increasing, got {boundaries}")
    self.learning_rate = float(learning_rate)
    self.boundaries = boundaries
    self.rates = rates

  def __call__(self, step):
    values = tf.constant([self.learning_rate] + self.rates, tf.float32)
    if not self.boundaries:
      return values[0]
    passed = tf.cast(step, tf.int64) >= tf.constant(self.boundaries, tf.int64)
    return tf.gather(values, tf.reduce_sum(tf.cast(passed, tf.int32)))

  def get_config(self):
    return {"learning_rate": self.learning_rate, "boundaries": list(self.boundaries),
            "rates": list(self.rates)}


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class LinearWarmup(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up into another schedule, continuous at the end of the warm-up.

  For step < warmup_steps: lr = target·(start_factor + (1 − start_factor)·step/warmup_steps)
  with target = schedule(warmup_steps); afterwards lr = schedule(step). The wrapped
  schedule keeps counting from step 0 (its decay spans the whole run, warm-up included),
  so boundaries and decay lengths are in global steps.
  """

  def __init__(self, schedule, warmup_steps: int, start_factor: float = 0.0):
    super().__init__()
    if isinstance(schedule, dict):
      schedule = tf_keras.optimizers.schedules.deserialize(schedule)
    if warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= start_factor <= 1.0:
      raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
    self.schedule = schedule
    self.warmup_steps = int(warmup_steps)
    self.start_factor = float(start_factor)

  def __call__(self, step):
    after = self.schedule(step)
    if self.warmup_steps == 0:
      return after
    step = _as_float(step)
    target = self.schedule(self.warmup_steps)
    fraction = self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
    return tf.where(step < self.warmup_steps, target * fraction, after)

  def get_config(self):
    return {"schedule": tf_keras.optimizers.schedules.serialize(self.schedule),
            "warmup_steps": self.warmup_steps, "start_factor": self.start_factor}


# -------------------------------------------------------------------------------------
# Optimizers.
# -------------------------------------------------------------------------------------


class _StepCoefficients(NamedTuple):
  """One RAdam step's scalars. The adaptive update is adaptive_lr·m/(√v + epsilon_t), the
  momentum update momentum_lr·m; the branch not taken has a zero rate (and epsilon_t is 1
  there, so that a zero v divides nothing by zero). lr is lr_t, for the weight decay."""
  lr: tf.Tensor
  adaptive_lr: tf.Tensor
  epsilon_t: tf.Tensor
  momentum_lr: tf.Tensor
  beta_1: tf.Tensor
  beta_2: tf.Tensor
  zero: tf.Tensor


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class RectifiedAdam(tf_keras.optimizers.Optimizer):
  """RAdam: Adam with a rectified adaptive learning rate (Liu et al. 2020, Algorithm 2).

  With t = iterations + 1, m̂ = m/(1 − β1^t), v̂ = v/(1 − β2^t),
  ρ∞ = 2/(1 − β2) − 1 and ρ_t = ρ∞ − 2tβ2^t/(1 − β2^t):

    ρ_t > sma_threshold:  θ ← θ − lr_t·(r_t·m̂/(√v̂ + ε) + λθ),
                          r_t = √((ρ_t − 4)(ρ_t − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρ_t))
    otherwise:            θ ← θ − lr_t·(m̂ + λθ)            (un-adapted momentum step)

  λ is `weight_decay`, applied decoupled (AdamW-style: scaled by the learning rate, not by
  the adaptive denominator) to variables not excluded with `exclude_from_weight_decay`.
  The paper rectifies when ρ_t > 4; `sma_threshold` defaults to 5 as in the widely used
  TF-Addons implementation (the variance of the adaptive term is intractable for ρ_t ≤ 4
  and large just above it).

  Optional built-in warm-up (TF-Addons semantics), used when `total_steps > 0`:
  lr_t = lr·t/w for t ≤ w = total_steps·warmup_proportion, then a linear decay to
  `min_learning_rate` at `total_steps`. Prefer a `LinearWarmup` schedule instead; the two
  compose multiplicatively if both are used.

  Sparse (`tf.IndexedSlices`) gradients are densified: moments decay everywhere, as for
  dense gradients.
  """

  def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
               sma_threshold=5.0, total_steps=0, warmup_proportion=0.1,
               min_learning_rate=0.0, weight_decay=None, clipnorm=None, clipvalue=None,
               global_clipnorm=None, use_ema=False, ema_momentum=0.99,
               ema_overwrite_frequency=None, jit_compile=True, name="RectifiedAdam",
               **kwargs):
    super().__init__(name=name, weight_decay=weight_decay, clipnorm=clipnorm,
                     clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
                     ema_momentum=ema_momentum,
                     ema_overwrite_frequency=ema_overwrite_frequency,
                     jit_compile=jit_compile, **kwargs)
    if not 0.0 <= beta_1 < 1.0 or not 0.0 < beta_2 < 1.0:
      raise ValueError(f"beta_1 must be in [0, 1) and beta_2 in (0, 1), got {beta_1}, {beta_2}")
    if 2.0 / (1.0 - beta_2) - 1.0 <= 4.0:
      raise ValueError(f"beta_2={beta_2} gives rho_inf <= 4, so the adaptive step is never "
                       "used; RAdam needs beta_2 > 0.6")
    if epsilon < 0 or total_steps < 0 or not 0.0 <= warmup_proportion <= 1.0:
      raise ValueError(f"invalid epsilon={epsilon}, total_steps={total_steps} or "
                       f"warmup_proportion={warmup_proportion}")
    self._learning_rate = self._build_learning_rate(learning_rate)
    self.beta_1 = float(beta_1)
    self.beta_2 = float(beta_2)
    self.epsilon = float(epsilon)
    self.sma_threshold = float(sma_threshold)
    self.total_steps = int(total_steps)
    self.warmup_proportion = float(warmup_proportion)
    self.min_learning_rate = float(min_learning_rate)
    # A plain object: a dict attribute would be tracked (and refused) by checkpoints.
    self._coefficient_cache = types.SimpleNamespace(entries=None)

  def build(self, var_list):
    super().build(var_list)
    if getattr(self, "_built", False):
      return
    self._built = True
    self._momentums = [self.add_variable_from_reference(v, "m") for v in var_list]
    self._velocities = [self.add_variable_from_reference(v, "v") for v in var_list]

  def _apply_weight_decay(self, variables):
    # The decay is applied in update_step with the warmed-up learning rate lr_t.
    del variables

  def _step_learning_rate(self, step, dtype):
    """lr_t, including the optional built-in warm-up/decay (TF-Addons semantics)."""
    lr = tf.cast(self.learning_rate, dtype)
    if self.total_steps <= 0:
      return lr
    warmup_steps = self.total_steps * self.warmup_proportion
    decay_steps = max(self.total_steps - warmup_steps, 1.0)
    decay_rate = (self.min_learning_rate - lr) / decay_steps
    warmup_lr = lr * step / max(warmup_steps, 1e-12)
    decayed_lr = lr + decay_rate * tf.minimum(step - warmup_steps, decay_steps)
    return tf.where(step <= warmup_steps, warmup_lr, decayed_lr)

  def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
    # The step's scalar coefficients are the same for every variable: built once per
    # apply (see `_coefficients`) instead of once per variable, where they were ~65% of
    # the shapes demo's training graph (19.7k of 31.3k ops for its 263 variables).
    self._coefficient_cache.entries = {}
    try:
      return super()._distributed_apply_gradients_fn(distribution, grads_and_vars,
                                                     **kwargs)
    finally:
      self._coefficient_cache.entries = None

  def _coefficients(self, dtype):
    """The `_StepCoefficients` of this step, in `dtype`.

    Cached for one apply per (dtype, graph): under XLA each variable's update is traced
    in a graph of its own, which must not use another graph's tensors.
    """
    cache = self._coefficient_cache.entries
    key = (dtype, tf.compat.v1.get_default_graph())
    if cache is not None and key in cache:
      return cache[key]
    step = tf.cast(self.iterations + 1, dtype)
    lr = self._step_learning_rate(step, dtype)
    # Scalars in a numerically careful form: ρ_t = ρ∞ − 2tβ2^t/(1 − β2^t) is a difference
    # of numbers near 2/(1 − β2), so 1 − β2^t comes from expm1 and ρ∞ from double
    # precision; float32 cancellation would otherwise shift ρ_t by ~0.01 early on.
    log_beta_2 = tf.cast(math.log(self.beta_2), dtype)
    beta_2_power = tf.exp(step * log_beta_2)
    bias_2 = -tf.math.expm1(step * log_beta_2)  # 1 − β2^t
    bias_1 = 1.0 - tf.pow(tf.cast(self.beta_1, dtype), step)  # 1 − β1^t
    rho_inf = 2.0 / (1.0 - self.beta_2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta_2_power / bias_2
    # Clamped so it stays finite when unused (ρ_t ≤ threshold).
    rectifier = tf.sqrt(tf.maximum(rho_t - 4.0, 0.0) * tf.maximum(rho_t - 2.0, 0.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * tf.maximum(rho_t, 1e-6)))
    # adaptive: r_t·m̂/(√v̂ + ε) = r_t·√(1 − β2^t)/(1 − β1^t) · m/(√v + ε·√(1 − β2^t));
    # momentum: m̂ = m/(1 − β1^t).
    adaptive = tf.cast(rho_t > self.sma_threshold, dtype)
    sqrt_bias_2 = tf.sqrt(bias_2)
    adaptive_lr = adaptive * lr / bias_1 * rectifier * sqrt_bias_2
    epsilon_t = adaptive * tf.cast(self.epsilon, dtype) * sqrt_bias_2 + (1.0 - adaptive)
    momentum_lr = (1.0 - adaptive) * lr / bias_1
    coefficients = _StepCoefficients(
        lr=lr, adaptive_lr=adaptive_lr, epsilon_t=epsilon_t, momentum_lr=momentum_lr,
        beta_1=tf.cast(self.beta_1, dtype), beta_2=tf.cast(self.beta_2, dtype),
        zero=tf.zeros([], dtype))
    if cache is not None:
      cache[key] = coefficients
    return coefficients

  def update_step(self, gradient, variable):
    # Two fused kernels per variable instead of ~14 element-wise ops save a third of the
    # step time and half of the first call (trace, graph optimisation) in
    # benchmarks/optimizers.py. Both kernels exist on CPU and GPU and under XLA (TPU).
    if isinstance(gradient, tf.IndexedSlices):
      gradient = tf.convert_to_tensor(gradient)
    dtype = variable.dtype
    index = self._index_dict[self._var_key(variable)]
    m, v = self._momentums[index], self._velocities[index]
    step = self._coefficients(dtype)
    if self.weight_decay and self._use_weight_decay(variable):
      # Decoupled decay θ ← θ − lr_t·λ·θ first: the update below does not read θ.
      tf.raw_ops.ResourceApplyGradientDescent(
          var=variable.handle, alpha=step.lr * tf.cast(self.weight_decay, dtype),
          delta=variable.value())
    # With both bias powers 0 the kernel's step size √(1 − β2^t)/(1 − β1^t)·lr is
    # adaptive_lr itself, which already holds the bias corrections.
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=m.handle, v=v.handle, beta1_power=step.zero,
        beta2_power=step.zero, lr=step.adaptive_lr, beta1=step.beta_1, beta2=step.beta_2,
        epsilon=step.epsilon_t, grad=gradient)
    tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=step.momentum_lr,
                                            delta=m.value())

  def get_config(self):
    config = super().get_config()
    config.update({
        "learning_rate": self._serialize_hyperparameter(self._learning_rate),
        "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
        "sma_threshold": self.sma_threshold, "total_steps": self.total_steps,
        "warmup_proportion": self.warmup_proportion,
        "min_learning_rate": self.min_learning_rate,
    })
    return config


class _DelegatingOptimizer(tf_keras.optimizers.Optimizer):
  """An optimizer that steps through `self._optimizer`: its `iterations` (the step count
  of schedules) and `learning_rate` are the wrapped optimizer's."""

  def __init__(self, optimizer, name, **kwargs):
    _check_new_style(optimizer, f"{type(self).__name__} optimizer")
    super().__init__(name=name, jit_compile=False, **kwargs)
    self._optimizer = optimizer

  def _create_iteration_variable(self):
    # The step counter is the wrapped optimizer's (see `iterations`).
    pass

  @property
  def optimizer(self):
    """The wrapped optimizer."""
    return self._optimizer

  @property
  def iterations(self):
    return self._optimizer.iterations

  @iterations.setter
  def iterations(self, variable):
    self._optimizer.iterations = variable

  @property
  def learning_rate(self):
    return self._optimizer.learning_rate

  @learning_rate.setter
  def learning_rate(self, learning_rate):
    self._optimizer.learning_rate = learning_rate

  def update_step(self, gradient, variable):
    raise NotImplementedError(f"{type(self).__name__} delegates updates")


def _check_new_style(optimizer, label):
  if not isinstance(optimizer, tf_keras.optimizers.Optimizer):
    raise ValueError(f"{label} must be a new-style tf_keras.optimizers.Optimizer, got "
                     f"{type(optimizer).__name__}")


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class Lookahead(_DelegatingOptimizer):
  """Lookahead (Zhang et al. 2019) around any new-style tf_keras optimizer.

  The wrapped optimizer updates the model ("fast") weights every step. Every
  `sync_period` steps (when its `iterations` becomes a multiple of k):
  slow ← slow + α·(fast − slow), then fast ← slow. Slow weights are optimizer variables
  (`slow/<variable name>`) that checkpoint with the wrapped optimizer's state.

  Slow weights start as the weights seen when the optimizer is built and are re-copied
  from the fast weights at the first step of every period (where they are equal unless the
  weights were changed outside the optimizer, e.g. restored from a pretrained checkpoint
  after the optimizer was built).

  `iterations` and `learning_rate` are those of the wrapped optimizer. Under
  `LossScaleOptimizer(Lookahead(...))` a skipped (non-finite) step still counts as a step,
  as for every tf_keras optimizer, so a period may contain fewer fast updates.
  """

  def __init__(self, optimizer, sync_period=6, slow_step_size=0.5, name="Lookahead",
               **kwargs):
    if isinstance(optimizer, dict):
      optimizer = tf_keras.optimizers.deserialize(optimizer, use_legacy_optimizer=False)
    if int(sync_period) < 1 or not 0.0 < slow_step_size <= 1.0:
      raise ValueError(f"sync_period must be >= 1 and slow_step_size in (0, 1], got "
                       f"{sync_period}, {slow_step_size}")
    super().__init__(optimizer, name=name, **kwargs)
    self.sync_period = int(sync_period)
    self.slow_step_size = float(slow_step_size)

  @property
  def variables(self):
    return list(self._optimizer.variables) + list(self._variables)

  def build(self, var_list):
    super().build(var_list)
    if getattr(self, "_built", False):
      return
    self._built = True
    self._optimizer.build(var_list)
    self._slow_weights = [self.add_variable_from_reference(v, "slow", initial_value=v)
                          for v in var_list]

  def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                      **kwargs):
    grads_and_vars = list(grads_and_vars)
    with tf.init_scope():
      self.build([v for _, v in grads_and_vars])
    updated = [v for g, v in grads_and_vars if g is not None]
    self._update_slow_weights(updated, self._copy_fast)
    self._optimizer.apply_gradients(
        grads_and_vars, name=name, skip_gradients_aggregation=skip_gradients_aggregation,
        **kwargs)
    self._update_slow_weights(updated, self._synchronize)
    return self.iterations

  def _slow_weight(self, variable):
    return self._slow_weights[self._index_dict[self._var_key(variable)]]

  def _update_slow_weights(self, variables, fn):
    """At a period boundary, runs fn(fast, slow) on every device copy of each variable."""

    def update_all(distribution, variables):
      for variable in variables:
        distribution.extended.update(variable, fn, args=(self._slow_weight(variable),),
                                     group=False)

    def cross_replica(distribution, variables):
      # One cond for all variables: a cond per variable costs more than Adam's whole step.
      # Selects every step instead traced ~15% faster for the shapes demo but stepped
      # ~30% slower: their ops run every step (on GPUs, one launch each).
      at_boundary = tf.equal(self.iterations % self.sync_period, 0)
      tf.cond(at_boundary, lambda: update_all(distribution, variables), lambda: None)

    tf.__internal__.distribute.interim.maybe_merge_call(
        cross_replica, self._distribution_strategy, variables)

  @staticmethod
  @tf.autograph.experimental.do_not_convert
  def _copy_fast(fast, slow):
    slow.assign(fast.value(), read_value=False)

  @tf.autograph.experimental.do_not_convert
  def _synchronize(self, fast, slow):
    tf.raw_ops.ResourceApplyGradientDescent(
        var=slow.handle, alpha=tf.cast(self.slow_step_size, slow.dtype),
        delta=slow.value() - fast.value())
    fast.assign(slow.value(), read_value=False)

  def finalize_variable_values(self, var_list):
    self._optimizer.finalize_variable_values(var_list)

  def get_config(self):
    return {"optimizer": tf_keras.optimizers.serialize(self._optimizer),
            "sync_period": self.sync_period, "slow_step_size": self.slow_step_size,
            "name": self.name}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config["optimizer"] = tf_keras.optimizers.deserialize(
        config["optimizer"], custom_objects=custom_objects, use_legacy_optimizer=False)
    return cls(**config)


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class GroupedOptimizer(_DelegatingOptimizer):
  """Two optimizers for two groups of variables, e.g. a backbone with its own learning rate.

  `group_optimizer` updates `group_variables` (matched by identity); `optimizer` updates
  every other variable. Each step the gradients are aggregated over replicas once, then
  clipped together by `global_clipnorm` (the norm over *all* gradients, as with one
  optimizer), then each optimizer applies its share. Both count the same steps, so
  schedules of the global step stay aligned. `iterations` and `learning_rate` are those of
  `optimizer`. Nesting: `LossScaleOptimizer(GroupedOptimizer(Lookahead(...), ...))`.

  Args:
    optimizer: new-style tf_keras optimizer for the other variables (no clipping of its
      own).
    group_optimizer: new-style tf_keras optimizer for `group_variables`.
    group_variables: the variables of the group.
    global_clipnorm: clip all gradients to this global norm (None: no clipping).
  """

  def __init__(self, optimizer, group_optimizer, group_variables, global_clipnorm=None,
               name="GroupedOptimizer", **kwargs):
    _check_new_style(group_optimizer, "GroupedOptimizer group_optimizer")
    super().__init__(optimizer, name=name, **kwargs)
    self._group_optimizer = group_optimizer
    self._group_keys = {self._var_key(v) for v in group_variables}
    self.clip_all_norm = global_clipnorm

  @property
  def group_optimizer(self):
    return self._group_optimizer

  @property
  def variables(self):
    return list(self._optimizer.variables) + list(self._group_optimizer.variables)

  def _split(self, items, variable_of):
    in_group = [x for x in items if self._var_key(variable_of(x)) in self._group_keys]
    others = [x for x in items if self._var_key(variable_of(x)) not in self._group_keys]
    return others, in_group

  def build(self, var_list):
    super().build(var_list)
    if getattr(self, "_built", False):
      return
    self._built = True
    others, in_group = self._split(list(var_list), lambda v: v)
    self._optimizer.build(others)
    self._group_optimizer.build(in_group)

  def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                      **kwargs):
    grads_and_vars = list(grads_and_vars)
    with tf.init_scope():
      self.build([v for _, v in grads_and_vars])
    if not skip_gradients_aggregation and kwargs.pop("experimental_aggregate_gradients",
                                                     True):
      grads_and_vars = self.aggregate_gradients(grads_and_vars)
    grads_and_vars = [(g, v) for g, v in grads_and_vars if g is not None]
    if self.clip_all_norm and grads_and_vars:
      clipped, _ = tf.clip_by_global_norm([g for g, _ in grads_and_vars], self.clip_all_norm)
      grads_and_vars = list(zip(clipped, [v for _, v in grads_and_vars]))
    for optimizer, share in zip((self._optimizer, self._group_optimizer),
                                self._split(grads_and_vars, lambda gv: gv[1])):
      if share:
        optimizer.apply_gradients(share, name=name, skip_gradients_aggregation=True)
      else:  # Still a step: keeps both schedules on the global step.
        optimizer.iterations.assign_add(1)
    return self.iterations

  def finalize_variable_values(self, var_list):
    others, in_group = self._split(list(var_list), lambda v: v)
    self._optimizer.finalize_variable_values(others)
    self._group_optimizer.finalize_variable_values(in_group)

  def get_config(self):
    # The group is a set of live variables: a config cannot name them.
    raise NotImplementedError("GroupedOptimizer holds variables and is not serializable; "
                              "rebuild it with build_optimizer(..., backbone_variables=...)")


# -------------------------------------------------------------------------------------
# Construction from the config.
# -------------------------------------------------------------------------------------


def build_schedule(solver_options, total_steps: int,
                   learning_rate_multiplier: float = 1.0):
  """The learning-rate schedule described by `solver_options` (a `SolverOptions`).

  Poly and cosine decay over `total_steps`; step boundaries are global steps; a linear
  warm-up of `warmup_steps` ramps up to the schedule's value at its end. Every rate is
  multiplied by `learning_rate_multiplier`.
  """
  if total_steps <= solver_options.warmup_steps:
    raise ValueError(f"total_steps ({total_steps}) must exceed solver.warmup_steps "
                     f"({solver_options.warmup_steps})")
  scale = float(learning_rate_multiplier)
  base_lr = solver_options.learning_rate * scale
  end_lr = solver_options.end_learning_rate * scale
  name = solver_options.schedule
  if name == "constant":
    schedule = ConstantLearningRate(base_lr)
  elif name == "poly":
    schedule = PolyLearningRate(base_lr, total_steps, solver_options.poly_power, end_lr)
  elif name == "cosine":
    schedule = CosineLearningRate(base_lr, total_steps, end_lr)
  elif name == "step":
    schedule = StepLearningRate(base_lr, solver_options.step_boundaries,
                                [r * scale for r in solver_options.step_learning_rates])
  else:
    raise ValueError(f"solver.schedule: unknown schedule {name!r}; expected one of "
                     "constant, poly, cosine, step")
  if solver_options.warmup_steps > 0:
    if solver_options.warmup_type != "linear":
      raise ValueError(f"solver.warmup_type: unknown warm-up {solver_options.warmup_type!r};"
                       " expected 'linear'")
    schedule = LinearWarmup(schedule, solver_options.warmup_steps,
                            solver_options.warmup_start_factor)
  return schedule


def _single_optimizer(solver_options, schedule, global_clipnorm):
  """One optimizer (wrapped in Lookahead when enabled) following `schedule`."""
  common = {"learning_rate": schedule,
            "weight_decay": solver_options.weight_decay or None,
            "global_clipnorm": global_clipnorm}
  name = solver_options.optimizer
  if name == "sgd":
    optimizer = tf_keras.optimizers.SGD(momentum=solver_options.momentum,
                                        nesterov=solver_options.nesterov, **common)
  elif name in ("adam", "adamw", "radam"):
    adam_args = dict(beta_1=solver_options.beta_1, beta_2=solver_options.beta_2,
                     epsilon=solver_options.epsilon, **common)
    if name == "adam":
      optimizer = tf_keras.optimizers.Adam(**adam_args)
    elif name == "adamw":
      # tf_keras' AdamW defaults weight_decay to 0.004 when given None; 0 means none here.
      adam_args["weight_decay"] = solver_options.weight_decay
      optimizer = tf_keras.optimizers.AdamW(**adam_args)
    else:
      optimizer = RectifiedAdam(sma_threshold=solver_options.radam_sma_threshold, **adam_args)
  else:
    raise ValueError(f"solver.optimizer: unknown optimizer {name!r}; expected one of "
                     "sgd, adam, adamw, radam")
  if solver_options.weight_decay_exclude:
    optimizer.exclude_from_weight_decay(var_names=list(solver_options.weight_decay_exclude))
  if solver_options.lookahead.enable:
    optimizer = Lookahead(optimizer, solver_options.lookahead.sync_period,
                          solver_options.lookahead.slow_step_size)
  return optimizer


def build_optimizer(solver_options, total_steps: int, learning_rate_multiplier: float = 1.0,
                    backbone_variables=None
                    ) -> Tuple[tf_keras.optimizers.Optimizer,
                               tf_keras.optimizers.schedules.LearningRateSchedule]:
  """Builds the optimizer and its schedule from a `SolverOptions` message.

  Create it inside `strategy.scope()`. Weight decay is decoupled for every optimizer
  (θ ← θ − lr·λ·θ each step), skipping variables whose names match a
  `solver.weight_decay_exclude` regex; gradient clipping is by global norm. Mixed-precision
  loss scaling is the training loop's job: it wraps the result in `LossScaleOptimizer`.

  Args:
    solver_options: `deeplab_axial.protos.experiment_pb2.SolverOptions`.
    total_steps: training length in steps (decay length of poly/cosine).
    learning_rate_multiplier: scales every learning rate.
    backbone_variables: the backbone's trainable variables; needed when
      `solver.backbone_learning_rate_multiplier` is not 1. They then get their own
      optimizer (same type, schedule times the multiplier) in a `GroupedOptimizer`.

  Returns:
    `(optimizer, schedule)`; the optimizer is `Lookahead(...)` when `solver.lookahead.enable`
    (inside the `GroupedOptimizer`, per group, with a backbone multiplier).

  Raises:
    ValueError: unknown optimizer/schedule, or a backbone multiplier without
      `backbone_variables`.
  """
  schedule = build_schedule(solver_options, total_steps, learning_rate_multiplier)
  clipnorm = solver_options.clip_gradient_norm or None
  backbone_multiplier = solver_options.backbone_learning_rate_multiplier
  if backbone_multiplier == 1.0:
    return _single_optimizer(solver_options, schedule, clipnorm), schedule
  if backbone_variables is None:
    raise ValueError(f"solver.backbone_learning_rate_multiplier is {backbone_multiplier}: "
                     "build_optimizer needs the backbone_variables")
  backbone_schedule = build_schedule(solver_options, total_steps,
                                     learning_rate_multiplier * backbone_multiplier)
  optimizer = GroupedOptimizer(
      _single_optimizer(solver_options, schedule, None),
      _single_optimizer(solver_options, backbone_schedule, None),
      backbone_variables, global_clipnorm=clipnorm)
  return optimizer, schedule


# -------------------------------------------------------------------------------------
# Resuming across a change of grouping (solver.backbone_learning_rate_multiplier).
# -------------------------------------------------------------------------------------


def _unwrap_loss_scale(optimizer):
  return getattr(optimizer, "inner_optimizer", optimizer)


def is_grouped(optimizer):
  """Whether `optimizer` (possibly inside a `LossScaleOptimizer`) is a `GroupedOptimizer`."""
  return isinstance(_unwrap_loss_scale(optimizer), GroupedOptimizer)


def checkpoint_is_grouped(path, key):
  """Whether the optimizer saved under `key` in checkpoint `path` is a `GroupedOptimizer`.

  A `LossScaleOptimizer` delegates its checkpoint to the optimizer it wraps, so a grouped
  optimizer always saves its backbone optimizer under `<key>/_group_optimizer/`.
  """
  prefix = f"{key}/_group_optimizer/"
  return any(name.startswith(prefix) for name, _ in tf.train.list_variables(path))


def _clone(optimizer):
  return type(optimizer).from_config(optimizer.get_config())


def _per_variable_state(optimizer, var_list, path=()):
  """Yields ((optimizer path, state kind, variable key), state variable) for `optimizer`
  built on `var_list`, ignoring how the variables are grouped.

  tf_keras optimizers name each per-variable state `<kind>/<variable name>` (e.g. `m/...`,
  `slow/...`) and create the states of one kind in the order of `var_list`; the optimizer
  path (e.g. Lookahead -> RectifiedAdam) tells apart the same kind at different levels.
  """
  if isinstance(optimizer, GroupedOptimizer):
    others, in_group = optimizer._split(list(var_list), lambda v: v)  # pylint: disable=protected-access
    yield from _per_variable_state(optimizer.optimizer, others, path)
    yield from _per_variable_state(optimizer.group_optimizer, in_group, path)
    return
  path += (type(optimizer).__name__,)
  if isinstance(optimizer, _DelegatingOptimizer):
    yield from _per_variable_state(optimizer.optimizer, var_list, path)
  by_kind = {}
  for state in optimizer._variables:  # pylint: disable=protected-access
    if state is not optimizer.iterations:
      by_kind.setdefault(state.name.split("/", 1)[0], []).append(state)
  for kind, states in by_kind.items():
    if len(states) != len(var_list):
      raise ValueError(f"{type(optimizer).__name__} has {len(states)} '{kind}' states for "
                       f"{len(var_list)} variables; cannot match them to variables")
    for variable, state in zip(var_list, states):
      yield (path, kind, optimizer._var_key(variable)), state  # pylint: disable=protected-access


def _step_counters(optimizer):
  """The `iterations` variables of every optimizer that counts steps on its own."""
  if isinstance(optimizer, GroupedOptimizer):
    return _step_counters(optimizer.optimizer) + _step_counters(optimizer.group_optimizer)
  return [optimizer.iterations]


def restore_regrouped_state(optimizer, path, key, var_list, group_variables):
  """Restores optimizer state saved with the other grouping (one optimizer <-> grouped).

  Builds a scratch optimizer with the checkpoint's structure out of copies of
  `optimizer`'s own, restores the checkpoint into it and copies every per-variable state
  (moments, Lookahead slow weights, ...) and the step count to the matching variable of
  `optimizer`. Call inside the strategy scope, after `optimizer.build(var_list)`. A
  `LossScaleOptimizer`'s dynamic loss scale is not carried over: it restarts and adapts
  within a few steps.

  Args:
    optimizer: the optimizer to restore (grouped or not), built on `var_list`.
    path: the checkpoint prefix.
    key: the name the optimizer was saved under in `tf.train.Checkpoint`.
    var_list: the trainable variables, in the order the optimizer was built on.
    group_variables: the variables of the group (the backbone) when grouped.

  Raises:
    ValueError: the checkpoint's optimizer state does not fit (e.g. another
      `solver.optimizer` or `solver.lookahead` setting), naming the checkpoint.
  """
  current = _unwrap_loss_scale(optimizer)
  if isinstance(current, GroupedOptimizer):
    scratch = _clone(current.optimizer)
  else:
    scratch = GroupedOptimizer(_clone(current), _clone(current), group_variables)
  scratch.build(var_list)
  try:
    tf.train.Checkpoint(**{key: scratch}).restore(path).expect_partial(
    ).assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
        f"the optimizer state in checkpoint {path} does not fit the optimizer built from "
        "the config, even allowing for a change of solver.backbone_learning_rate_multiplier"
        f" (was solver.optimizer or solver.lookahead changed?): {e}") from e
  saved = dict(_per_variable_state(scratch, var_list))
  for state_key, state in _per_variable_state(current, var_list):
    state.assign(saved[state_key])
  step = _step_counters(scratch)[0]
  for counter in _step_counters(current):
    counter.assign(step)
