"""Every shipped config (configs/**) builds its task's serving module and traces both
signatures with the outputs docs/serving.md lists for its task.

Models are built at their real sizes (randomly initialised; the signatures are traced
for any input size), about 10-25 s per config on the shared CPU, so the whole set is slow.
"""
import glob
import os

import pytest
import tensorflow as tf

from deeplab_axial import config as config_lib
from deeplab_axial import tasks
from deeplab_axial.data import datasets
from deeplab_axial.export import saved_model

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIGS = sorted(os.path.relpath(path, _REPO) for path in glob.glob(
    os.path.join(_REPO, "configs", "**", "*.textproto"), recursive=True))

_INT, _FLOAT = tf.int32, tf.float32
_SIZES = {"image_height": (_INT, [None]), "image_width": (_INT, [None])}


def _expected_outputs(config, info, options):
  """{output name: (dtype, shape)} per task, as documented in docs/serving.md."""
  classes = info.num_classes
  meta = config.model.meta_architecture
  if meta == "classification":
    return {"classes": (_INT, [None]), "probabilities": (_FLOAT, [None, classes]),
            "top_5": (_INT, [None, 5]), **_SIZES}
  maps = {"semantic": (_INT, [None, None, None]),
          "semantic_probs": (_FLOAT, [None, None, None, classes]), **_SIZES}
  if meta == "semantic":
    if config.model.context_head.type == "gated_scnn":
      maps["boundary"] = (_FLOAT, [None, None, None])
    return maps
  return {"panoptic": (_INT, [None, None, None]), "instance": (_INT, [None, None, None]),
          "center_heatmap": (_FLOAT, [None, None, None]),
          "instance_panoptic_ids": (_INT, [None, options.post_processing.top_k]),
          "instance_scores": (_FLOAT, [None, options.post_processing.top_k]), **maps}


def test_every_task_has_a_shipped_config():
  metas = {config_lib.load_config(os.path.join(_REPO, path)).model.meta_architecture
           for path in _CONFIGS}
  assert metas == set(tasks.TASKS)


# Every shipped config at full size: with the full rehearsal, on demand (README); CI
# checks the shapes demos and the ImageNet S config through tests/training/test_rehearsal.py.
@pytest.mark.full_rehearsal
@pytest.mark.parametrize("path", _CONFIGS)
def test_shipped_config_traces_both_serving_signatures(path):
  config = config_lib.load_config(os.path.join(_REPO, path))
  info = datasets.dataset_info_from_config(config.dataset)
  task = tasks.create_task(config, info)
  options = saved_model.serving_options_from_config(config, info)
  module = task.serving_module(task.build_model(), options)
  signatures = module.signatures()
  assert set(signatures) == {"serving_default", "serve_image_bytes"}
  expected = _expected_outputs(config, info, options)
  for name, function in signatures.items():
    outputs = function.structured_outputs
    assert {key: (value.dtype, value.shape.as_list()) for key, value in outputs.items()} == (
        expected), (path, name)
