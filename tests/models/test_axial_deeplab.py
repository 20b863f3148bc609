"""Axial-DeepLab presets: outputs, parameter counts vs AD Tab. 2, CPU training steps."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.models.meta.axial_deeplab import axial_deeplab
from tests.reference import panoptic_training


@pytest.mark.slow
def test_outputs_at_input_resolution_without_aspp():
  model = axial_deeplab("axial_deeplab_s", 5, span=5, width_multiplier=0.125)
  assert model.get_layer("semantic_decoder").use_aspp is False
  backbone = model.get_layer("axial_resnet_s")
  assert backbone.get_layer("res5_block1").strides == 1  # output stride 16
  outputs = model(tf.random.uniform([2, 33, 49, 3], 0, 255))
  assert outputs["semantic_logits"].shape == (2, 33, 49, 5)
  assert outputs["center_heatmap"].shape == (2, 33, 49, 1)
  assert outputs["center_offset"].shape == (2, 33, 49, 2)


def test_unknown_preset_raises():
  with pytest.raises(ValueError, match="axial_deeplab_s"):
    axial_deeplab("axial_deeplab_xxl", 19)


@pytest.mark.slow
@pytest.mark.parametrize("name,paper,span", [("axial_deeplab_s", 12.1e6, 65),
                                             ("axial_deeplab_m", 25.9e6, 65),
                                             ("axial_deeplab_l", 44.9e6, 65),
                                             ("axial_deeplab_xl", 173.0e6, 65),
                                             ("axial_deeplab_s", 12.1e6, None)])
def test_parameters_within_four_percent_of_paper(name, paper, span):
  # AD Tab. 2 (COCO, 133 classes), at the paper's span. A global span changes only the
  # relative tables' rows (one formula for every preset), checked once, on S.
  model = axial_deeplab(name, 133, span=span)
  parameters = sum(np.prod(w.shape) for w in model.trainable_weights)
  assert abs(parameters / paper - 1) < 0.04


@pytest.mark.slow
def test_s_one_training_step_at_513():
  first, _, _, _ = panoptic_training.run("axial_deeplab_s", 513, steps=1)
  assert np.isfinite(first)


@pytest.mark.slow
def test_small_model_loss_decreases_over_20_steps():
  first, last, _, _ = panoptic_training.run("axial_deeplab_s", 33, steps=20,
                                            width_multiplier=0.125, span=5)
  assert last < 0.7 * first
