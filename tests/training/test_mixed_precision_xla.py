"""`train.mixed_precision` and `train.jit_compile` in the trainer, on the shapes demo model.

The demo config (configs/shapes/axial_deeplab_demo.textproto: Axial-ResNet backbone,
Lookahead(RAdam)) is shrunk to 33x33 crops, batch 2 and 2-3 steps. Each test checks
that the switch took effect (loss scaling, layer compute dtype, an XLA-compiled step) so
that it fails if the trainer ignored the option.
"""
import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from deeplab_axial import config as config_lib
from deeplab_axial.data.converters import shapes
from deeplab_axial.export import from_config
from deeplab_axial.models import builder
from deeplab_axial.training import experiment

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEMO_CONFIG = os.path.join(_REPO, "configs", "shapes", "axial_deeplab_demo.textproto")
_CROP = 33
# tf_keras' dynamic loss scale starts at 2**15 and doubles after 2000 finite steps.
_INITIAL_LOSS_SCALE = 2.0 ** 15


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
  previous = tf_keras.mixed_precision.global_policy()
  yield
  tf_keras.mixed_precision.set_global_policy(previous)


@pytest.fixture(scope="module")
def shapes_records(tmp_path_factory):
  return shapes.ensure_shapes_tfrecords(str(tmp_path_factory.mktemp("shapes")),
                                        image_size=(_CROP, _CROP), num_train=8, num_val=4)


def _demo_config(records, steps, overrides=()):
  return config_lib.load_config(_DEMO_CONFIG, [
      f"dataset.train_file_pattern: ['{records['train']}']",
      f"dataset.eval_file_pattern: ['{records['val']}']",
      f"dataset.crop_size: [{_CROP}, {_CROP}]", f"eval.crop_size: [{_CROP}, {_CROP}]",
      f"export.crop_size: [{_CROP}, {_CROP}]", "dataset.shuffle_buffer_size: 8",
      "train.batch_size: 2", "eval.batch_size: 2", f"train.steps: {steps}",
      "train.steps_per_loop: 1", "train.summary_interval: 1",
      f"train.checkpoint_interval: {steps}", "solver.warmup_steps: 0", *overrides])


@pytest.fixture
def experiments(monkeypatch):
  """The `_Experiment` objects that `run_experiment` creates, in order."""
  created = []

  class Recorded(experiment._Experiment):  # pylint: disable=protected-access

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      created.append(self)

  monkeypatch.setattr(experiment, "_Experiment", Recorded)
  return created


def _logged_losses(model_dir):
  """[total loss of step 1, step 2, ...] from the train summaries."""
  losses = {}
  for path in glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "losses/total":
          losses[event.step] = float(tf.make_ndarray(value.tensor))
  return [losses[step] for step in sorted(losses)]


def _backbone_conv_dtypes(model):
  """(compute dtypes, kernel dtypes) of the backbone's convolutions.

  The heads' last convolutions compute in float32 on purpose (see panoptic_deeplab.py);
  the backbone follows the global policy.
  """
  convs = [layer for layer in builder.find_backbone(model)._flatten_layers()  # pylint: disable=protected-access
           if isinstance(layer, tf_keras.layers.Conv2D)]
  assert len(convs) > 10
  return ({layer.compute_dtype for layer in convs},
          {layer.kernel.dtype.name for layer in convs})


@pytest.mark.slow
# The float32 evaluation and export of the checkpoint do not depend on the policy that
# trained it (its variables are float32 either way): checked once, after float16.
@pytest.mark.parametrize("policy, compute_dtype, loss_scaling, restore", [
    ("mixed_float16", "float16", True, True), ("mixed_bfloat16", "bfloat16", False, False)])
def test_mixed_precision_trains_then_restores_into_float32_eval_and_export(
    shapes_records, experiments, tmp_path, policy, compute_dtype, loss_scaling, restore):
  steps = 2
  config = _demo_config(shapes_records, steps, [f"train.mixed_precision: '{policy}'"])
  model_dir = str(tmp_path / "model")
  experiment.run_experiment(config, "train", model_dir)
  trained = experiments[-1]
  # Variables stay float32 (master weights); the layers compute in the policy's dtype.
  assert _backbone_conv_dtypes(trained.model) == ({compute_dtype}, {"float32"})
  optimizer = trained.trainer.optimizer
  assert isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer) == loss_scaling
  if loss_scaling:
    # Each step either counted a finite step or halved the scale after an overflow.
    finite_steps = int(optimizer.dynamic_counter.numpy())
    halvings = math.log2(_INITIAL_LOSS_SCALE / float(optimizer.loss_scale.numpy()))
    assert finite_steps + halvings == steps, (finite_steps, halvings)
    saved = dict(tf.train.list_variables(model_dir))
    assert "optimizer/loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE" in saved
  losses = _logged_losses(model_dir)
  assert len(losses) == steps and all(math.isfinite(v) and v > 0 for v in losses), losses
  assert tf_keras.mixed_precision.global_policy().name == "float32"
  if not restore:
    return

  # The checkpoint restores into a float32 evaluation ...
  float32_config = _demo_config(shapes_records, steps, ["train.mixed_precision: 'float32'"])
  metrics = experiment.run_experiment(float32_config, "eval", model_dir)
  evaluated = experiments[-1]
  assert _backbone_conv_dtypes(evaluated.model) == ({"float32"}, {"float32"})
  for restored, variable in zip(evaluated.model.variables, trained.model.variables):
    np.testing.assert_array_equal(restored.numpy(), variable.numpy(), err_msg=variable.name)
  assert {"pq", "miou"} <= set(metrics) and all(
      math.isfinite(v) for v in metrics.values()), metrics

  # ... and into a float32 SavedModel (export reads the mixed-precision config as written).
  result = from_config.export_from_config(config, model_dir, str(tmp_path / "export"))
  serving = tf.saved_model.load(result.export_dir).signatures["serving_default"]
  images = np.random.default_rng(0).integers(0, 256, (1, _CROP, _CROP, 3), np.uint8)
  outputs = serving(images=tf.constant(images))
  dtypes = {k: v.dtype for k, v in outputs.items()}
  assert set(dtypes.values()) == {tf.float32, tf.int32}, dtypes
  assert (dtypes["panoptic"], dtypes["semantic"], dtypes["semantic_probs"]) == (
      tf.int32, tf.int32, tf.float32), dtypes
  probabilities = outputs["semantic_probs"].numpy()
  assert np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


def _xla_marked_functions(trainer):
  """Names of the functions inside the traced training loop that XLA must compile."""
  loop_fn = trainer._train_loop  # pylint: disable=protected-access
  concrete = loop_fn.get_concrete_function(trainer._iterator, tf.constant(1))  # pylint: disable=protected-access
  library = concrete.graph.as_graph_def().library
  return [f.signature.name for f in library.function
          if f.attr.get("_XlaMustCompile") is not None and f.attr["_XlaMustCompile"].b]


@pytest.mark.slow
def test_xla_step_gives_the_same_losses_as_the_plain_step(shapes_records, experiments,
                                                          tmp_path):
  steps = 3
  losses, compiled = {}, {}
  for jit_compile in (False, True):
    config = _demo_config(shapes_records, steps,
                          [f"train.jit_compile: {str(jit_compile).lower()}"])
    model_dir = str(tmp_path / f"jit_{jit_compile}")
    experiment.run_experiment(config, "train", model_dir)
    losses[jit_compile] = _logged_losses(model_dir)
    compiled[jit_compile] = _xla_marked_functions(experiments[-1].trainer)
  assert not compiled[False] and compiled[True], compiled
  assert len(losses[True]) == steps
  # Same seed, data and weights: only float32 rounding differs (XLA fuses ops and reorders
  # reductions). The first loss (the forward pass) and the second (after one update)
  # agreed to 1e-7 relative on every machine measured; 1e-5 allows 100x that, while the
  # loss itself changes by >10% from step to step. By the third the rounding has been
  # through two RAdam updates, which divide each gradient by its own running magnitude,
  # so weights whose true gradient is ~0 take full-size steps in directions set by
  # rounding: measured 1e-7 on an AVX-512 machine but 0.35% on an AVX2 one.
  np.testing.assert_allclose(losses[True][:2], losses[False][:2], rtol=1e-5)
  np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)
  assert np.ptp(losses[False]) > 0.1 * losses[False][0]
