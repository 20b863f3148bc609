"""Shared fixtures: one small Panoptic-DeepLab with non-trivial weights, exported once."""
import os

import pytest
import tensorflow as tf

from deeplab_axial.data import datasets
from deeplab_axial.export import saved_model
from tests.export import export_fixtures


@pytest.fixture(scope="session")
def shapes_info():
  return datasets.get_dataset_info("shapes")


@pytest.fixture(scope="session")
def tiny_model(shapes_info):
  return export_fixtures.build_tiny_model(shapes_info.num_classes)


@pytest.fixture(scope="session")
def exported(tiny_model, shapes_info, tmp_path_factory):
  """(base_dir, version_dir) of one export into a base that already holds versions."""
  base = str(tmp_path_factory.mktemp("export"))
  for name in export_fixtures.PREEXISTING_VERSIONS + ("not_a_version",):
    os.makedirs(os.path.join(base, name))
  path = saved_model.export_saved_model(tiny_model, base, dataset_info=shapes_info,
                                        **export_fixtures.POST_PROCESSING)
  return base, path


@pytest.fixture(scope="session")
def loaded(exported):
  return tf.saved_model.load(exported[1])
