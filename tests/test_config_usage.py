"""The config read tracker, by hand on small configs (expected sets written out)."""
from google.protobuf import text_format
import pytest

from deeplab_axial import config as config_lib
from deeplab_axial import config_usage
from deeplab_axial.protos import experiment_pb2


def _proto(text):
  return text_format.Parse(text, experiment_pb2.ExperimentOptions())


def test_records_scalars_repeated_and_has_field_not_messages():
  config = _proto("""
      model { backbone { span: 65 } }
      dataset { crop_size: [65, 65] }
      eval { nms_kernel: 41 }""")
  tracker = config_usage.ReadTracker()
  tracked = tracker.wrap(config)
  assert tracked.model.backbone.span == 65
  assert list(tracked.dataset.crop_size) == [65, 65]
  assert tracked.eval.HasField("nms_kernel")
  assert not tracked.export.HasField("version")
  _ = tracked.solver  # reaching a message reads none of its fields
  assert tracker.read_paths == {"model.backbone.span", "dataset.crop_size",
                                "eval.nms_kernel", "export.version"}


def test_defaults_read_through_the_proxy_are_the_protos():
  tracker = config_usage.ReadTracker()
  tracked = tracker.wrap(experiment_pb2.ExperimentOptions())
  assert tracked.solver.optimizer == "adam"
  assert tracked.model.batch_norm_epsilon == pytest.approx(0.001)
  assert config_usage.unwrap(tracked.model) == experiment_pb2.ModelOptions()
  assert tracker.read_paths == {"solver.optimizer", "model.batch_norm_epsilon"}


def test_set_but_unread_lists_exactly_the_unread_set_fields():
  config = _proto("""
      experiment_name: "x"
      model { backbone { span: 65 name: "axial_resnet_s" } }
      dataset { targets { sigma: 4.0 } crop_size: [33, 33] }
      solver { lookahead { } }""")
  tracker = config_usage.ReadTracker()
  tracked = tracker.wrap(config)
  _ = tracked.model.backbone.span, tracked.dataset.crop_size
  # `lookahead {}` sets no leaf field, so it is not listed.
  assert config_usage.set_but_unread(config, tracker, lambda path, value: False) == [
      "dataset.targets.sigma", "experiment_name", "model.backbone.name"]


def test_loader_filled_defaults_are_not_settings():
  config = config_lib.parse_config("""
      model { meta_architecture: "classification" backbone { name: "axial_resnet_s" } }
      dataset { name: "imagenet" crop_size: [224, 224] }""")
  assert list(config.eval.scales) == [1.0]  # filled in by the loader
  tracker = config_usage.ReadTracker()
  unread = config_usage.set_but_unread(config, tracker)
  assert "eval.scales" not in unread and "eval.metrics" not in unread
  config.eval.scales[:] = [0.5, 1.0]
  assert "eval.scales" in config_usage.set_but_unread(config, tracker)


def test_check_all_read_names_the_fields_in_one_line():
  config = _proto('model { meta_architecture: "semantic" } dataset { targets { sigma: 4 } }')
  tracker = config_usage.ReadTracker()
  _ = tracker.wrap(config).model.meta_architecture
  with pytest.raises(config_usage.UnreadConfigError) as error:
    config_usage.check_all_read(config, tracker, mode="train_and_eval")
  assert str(error.value) == (
      "config field dataset.targets.sigma is set but nothing in mode 'train_and_eval' "
      "reads it for meta_architecture 'semantic'; remove it")
  tracker.record("dataset.targets.sigma")
  config_usage.check_all_read(config, tracker, mode="train_and_eval")


def test_tracked_config_is_read_only_and_prints_as_the_proto():
  config = _proto('experiment_name: "x"')
  tracker = config_usage.ReadTracker()
  tracked = tracker.wrap(config)
  with pytest.raises(AttributeError, match="read-only"):
    tracked.experiment_name = "y"
  assert config_lib.config_to_text(tracked) == config_lib.config_to_text(config)
  assert not tracker.read_paths
