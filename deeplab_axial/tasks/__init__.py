"""deeplab_axial.tasks: one module per task, below `training` and `export`.

`TASKS` is the registry: `model.meta_architecture` -> `Task` class. Adding a head is one
module (a `Task` subclass with its `TaskEvaluator`, and its serving module) plus one entry
here; see docs/architecture.md.
"""
from deeplab_axial.tasks.base import Task
from deeplab_axial.tasks.base import TaskEvaluator
from deeplab_axial.tasks.classification import ClassificationTask
from deeplab_axial.tasks.panoptic import PanopticTask
from deeplab_axial.tasks.post_processing import PostProcessingOptions
from deeplab_axial.tasks.post_processing import post_processing_from_config
from deeplab_axial.tasks.post_processing import resolve_post_processing
from deeplab_axial.tasks.semantic import SemanticTask
from deeplab_axial.tasks.serving import ServingOptions
from deeplab_axial.tasks.tta import predict_with_tta

TASKS = {
    "panoptic_deeplab": PanopticTask,
    "semantic": SemanticTask,
    "classification": ClassificationTask,
}


def create_task(experiment_config, dataset_info, train_patterns=(), eval_patterns=()):
  """The `Task` of `model.meta_architecture`.

  Raises:
    ValueError: an unknown meta-architecture.
  """
  meta = experiment_config.model.meta_architecture
  if meta not in TASKS:
    raise ValueError(f"model.meta_architecture {meta!r} is not one of {sorted(TASKS)}")
  return TASKS[meta](experiment_config, dataset_info, train_patterns, eval_patterns)


__all__ = ["ClassificationTask", "PanopticTask", "PostProcessingOptions", "SemanticTask",
           "ServingOptions", "TASKS", "Task", "TaskEvaluator", "create_task",
           "post_processing_from_config", "predict_with_tta", "resolve_post_processing"]
