"""Export driven by an experiment config: what `trainer/export.py` runs.

Builds the model from the config, restores a trainer checkpoint and writes the versioned
SavedModel (plus, optionally, a TFLite model of the semantic path), so the model served is
exactly the model the trainer evaluated: same architecture, same post-processing options
(`eval` section), same padding rule.
"""
import dataclasses
from typing import List, Optional, Tuple

from deeplab_axial import checkpoints
from deeplab_axial import config as config_lib
from deeplab_axial import tasks
from deeplab_axial.data import datasets
from deeplab_axial.export import saved_model


@dataclasses.dataclass(frozen=True)
class ExportResult:
  """Where `export_from_config` wrote, and from which checkpoint."""
  export_dir: str
  checkpoint: str
  tflite_path: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class RestoredModel:
  """A config's model with a checkpoint's weights, and how to serve it."""
  model: object
  task: tasks.Task
  dataset_info: datasets.DatasetInfo
  serving_options: saved_model.ServingOptions
  checkpoint: str


def restore_from_config(config, checkpoint, *, dataset_info=None, static_size=None,
                        **serving_fields) -> RestoredModel:
  """Builds the config's model, restores `checkpoint` and resolves its serving options.

  The one build -> restore -> options sequence behind export and `trainer/predict.py`.

  Args:
    config: a loaded `ExperimentOptions`.
    checkpoint: a checkpoint prefix or a model_dir (its latest checkpoint).
    dataset_info: the `DatasetInfo` (default: `config.dataset.name`'s).
    static_size: (height, width) of the static serving variant, or None.
    **serving_fields: further `ServingOptions` serving fields (jit_compile, ...).

  Raises:
    FileNotFoundError: no checkpoint at `checkpoint`.
    ValueError: a checkpoint that does not fit the config's model.
  """
  dataset_info = dataset_info or datasets.dataset_info_from_config(config.dataset)
  task = tasks.create_task(config, dataset_info)
  model = task.build_model()
  prefix = checkpoints.restore_model(model, checkpoint)
  options = saved_model.serving_options_from_config(config, dataset_info,
                                                    static_size=static_size,
                                                    **serving_fields)
  return RestoredModel(model, task, dataset_info, options, prefix)


def static_size_from_config(config, dataset_info) -> Tuple[int, int]:
  """The static serving size: `export.crop_size`, else `eval.crop_size`, else the dataset's.

  Raises:
    ValueError: when none of them is set.
  """
  for size in (config.export.crop_size, config.eval.crop_size, dataset_info.eval_crop_size):
    if size:
      return tuple(int(v) for v in size)
  raise ValueError("a static export size needs export.crop_size, eval.crop_size or a "
                   f"dataset eval_crop_size; none is set for dataset "
                   f"{dataset_info.name!r}")


def configured_version(config) -> Optional[int]:
  """`export.version` when the config sets it, else None (the next free version)."""
  return config.export.version if config.export.HasField("version") else None


def serving_variants(config, dataset_info) -> List[Tuple[Optional[Tuple[int, int]],
                                                        saved_model.ServingOptions]]:
  """[(static_size or None, ServingOptions)] of every SavedModel the config's export makes.

  The dynamic-size export always; the static variant (`--with_preprocessing_crop`) too
  when the config sets `export.crop_size` for it. Rehearsal traces each of them.
  """
  variants = [(None, saved_model.serving_options_from_config(config, dataset_info))]
  if config.export.crop_size:
    static = static_size_from_config(config, dataset_info)
    variants.append((static, saved_model.serving_options_from_config(
        config, dataset_info, static_size=static)))
  return variants


def export_from_config(config, checkpoint, output_dir, *, version=None, overwrite=False,
                       with_preprocessing_crop=False, jit_compile=False,
                       include_semantic_probs=True, tflite_output=None) -> ExportResult:
  """Exports the checkpoint of an experiment as a TF Serving SavedModel.

  Args:
    config: a loaded `ExperimentOptions` (`deeplab_axial.config.load_config`).
    checkpoint: a checkpoint prefix or a model_dir (its latest checkpoint).
    output_dir: the TF Serving model base path; writes `<output_dir>/<version>/`.
    version: positive int; None = `export.version` if the config sets it, else 1 + the
      largest existing version.
    overwrite: replace an existing version directory.
    with_preprocessing_crop: static-shape variant at `static_size_from_config`.
    jit_compile: XLA-compile the static variant's model and post-processing.
    include_semantic_probs: output `semantic_probs`.
    tflite_output: also write a TFLite model of the semantic path here (static size).

  Raises:
    ValueError: bad options, or a checkpoint that does not fit the config's model.
    FileNotFoundError: no checkpoint at `checkpoint`.
    FileExistsError: the version exists and `overwrite` is False.
  """
  dataset_info = datasets.dataset_info_from_config(config.dataset)
  static_size = (static_size_from_config(config, dataset_info)
                 if with_preprocessing_crop else None)
  restored = restore_from_config(config, checkpoint, dataset_info=dataset_info,
                                 static_size=static_size, jit_compile=jit_compile,
                                 include_semantic_probs=include_semantic_probs)
  model, prefix = restored.model, restored.checkpoint
  if version is None:
    version = configured_version(config)
  export_dir = saved_model.export_saved_model(
      model, output_dir, version=version, overwrite=overwrite, dataset_info=dataset_info,
      serving=restored.serving_options, task=restored.task,
      metadata={"checkpoint": prefix, "config": config_lib.config_to_text(config)})
  if tflite_output:
    from deeplab_axial.export import tflite  # pylint: disable=import-outside-toplevel
    size = static_size or static_size_from_config(config, dataset_info)
    tflite.convert_semantic_model(model, tflite_output, size)
  return ExportResult(export_dir, prefix, tflite_output or None)
