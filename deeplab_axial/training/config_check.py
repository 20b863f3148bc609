"""No silently ignored setting: build what a run builds and name the fields nothing read.

`read_like_a_run(config)` builds, from a tracked copy of `config` (see
`deeplab_axial.config_usage`), everything the trainer, the evaluator and the exporter read
from a config, without training: the experiment (`RunSettings`, task, model, optimizer,
sync-BN setting), the loss, the training and eval input pipelines (over an empty record
file: nothing is read from disk), the evaluator, and for exportable tasks the serving
options, static size and version. `check_config_is_read(config)` then raises a one-line
`config_usage.UnreadConfigError` naming every field the config sets that none of them read.

Rehearsal (`--mode=rehearse`) builds the same things at real shapes; it wraps the config
with its own `ReadTracker` and calls `config_usage.check_all_read` at the end instead.
"""
import os
import tempfile

import tensorflow as tf

from deeplab_axial import config_usage
from deeplab_axial.export import from_config
from deeplab_axial.training import experiment

# The union of the modes a rehearsal exercises; the check is against all of them.
REHEARSED_MODES = "train_and_eval + export"


def read_like_a_run(config, *, data_dir=None, strategy=None) -> config_usage.ReadTracker:
  """Builds what a train/eval/export run reads from `config`; returns the reads.

  Args:
    config: a loaded `ExperimentOptions`.
    data_dir: where relative file patterns and `dataset.dataset_info_file` resolve.
    strategy: a `tf.distribute.Strategy` (default: the current one).

  Returns:
    The `config_usage.ReadTracker` holding every field path read.
  """
  tracker = config_usage.ReadTracker()
  tracked = tracker.wrap(config)
  strategy = strategy or tf.distribute.get_strategy()
  data_dir = data_dir or experiment.default_data_dir()
  with tempfile.TemporaryDirectory() as model_dir, \
      experiment.mixed_precision_policy(tracked):
    # pylint: disable-next=protected-access
    run = experiment._Experiment(tracked, model_dir, strategy, data_dir)
    task = run.task
    empty_records = os.path.join(model_dir, "empty.tfrecord")
    tf.io.TFRecordWriter(empty_records).close()
    task.train_patterns = task.eval_patterns = [empty_records]
    task.build_loss()
    task.train_dataset(None)
    task.eval_dataset()
    with strategy.scope():
      task.create_evaluator(run.model)
    from_config.serving_variants(tracked, task.info)
    from_config.configured_version(tracked)
  return tracker


def check_config_is_read(config, *, data_dir=None, strategy=None) -> None:
  """Raises `config_usage.UnreadConfigError` when `config` sets a field no mode reads."""
  tracker = read_like_a_run(config, data_dir=data_dir, strategy=strategy)
  config_usage.check_all_read(config, tracker, REHEARSED_MODES)


__all__ = ["REHEARSED_MODES", "check_config_is_read", "read_like_a_run"]
