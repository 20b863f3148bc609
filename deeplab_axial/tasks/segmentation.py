"""What the panoptic and semantic tasks share: panoptic records in, the same augmentation."""
import abc
from typing import Optional

from deeplab_axial.data import pipeline
from deeplab_axial.tasks import base


class SegmentationTask(base.Task, abc.ABC):
  """Panoptic records (image + panoptic PNG), augmented the same way for both tasks."""

  def augmented_dataset(self, input_context, generate_targets):
    """The per-replica training pipeline, with Panoptic-DeepLab targets if asked."""
    dataset, augmentation = self.config.dataset, self.config.dataset.augmentation
    targets = dataset.targets
    return pipeline.build_panoptic_dataset(
        self.train_patterns, self.info, is_training=True,
        batch_size=self.config.train.batch_size, crop_size=tuple(dataset.crop_size),
        min_scale=augmentation.min_scale_factor, max_scale=augmentation.max_scale_factor,
        scale_step=augmentation.scale_factor_step, flip=augmentation.horizontal_flip,
        photometric=pipeline.PhotometricOptions() if augmentation.photometric else None,
        shuffle_buffer=dataset.shuffle_buffer_size, seed=self.config.train.seed,
        generate_targets=generate_targets,
        target_options={"sigma": targets.sigma,
                        "small_instance_area": targets.small_instance_area,
                        "small_instance_weight": targets.small_instance_weight,
                        "ignore_crowd_in_semantic": targets.ignore_crowd_in_semantic},
        input_context=input_context)

  def eval_dataset(self, batch_size: Optional[int] = None):
    eval_options = self.config.eval
    crop = tuple(eval_options.crop_size) or tuple(self.info.eval_crop_size or ()) or None
    return pipeline.build_panoptic_dataset(
        self.eval_patterns, self.info, is_training=False,
        batch_size=batch_size or eval_options.batch_size, crop_size=crop,
        generate_targets=False)

  @property
  def scales(self):
    return tuple(self.config.eval.scales) or (1.0,)
