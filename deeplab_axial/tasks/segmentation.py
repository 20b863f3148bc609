"""What the panoptic and semantic tasks share: panoptic records in, the same augmentation."""
import abc
from typing import Optional

from deeplab_axial.data import pipeline
from deeplab_axial.tasks import base


class SegmentationTask(base.Task, abc.ABC):
  """Panoptic records (image + panoptic PNG), augmented the same way for both tasks."""

  def augmented_dataset(self, input_context, generate_targets):
    """The per-replica training pipeline, with Panoptic-DeepLab targets if asked."""
    return pipeline.build_panoptic_dataset(
        self.train_patterns, self.info, is_training=True,
        batch_size=self.config.train.batch_size, seed=self.config.train.seed,
        generate_targets=generate_targets, input_context=input_context,
        **pipeline.panoptic_options_from_config(self.config.dataset, is_training=True,
                                                generate_targets=generate_targets))

  def eval_dataset(self, batch_size: Optional[int] = None):
    eval_options = self.config.eval
    crop = tuple(eval_options.crop_size) or tuple(self.info.eval_crop_size or ()) or None
    return pipeline.build_panoptic_dataset(
        self.eval_patterns, self.info, is_training=False,
        batch_size=batch_size or eval_options.batch_size, crop_size=crop,
        generate_targets=False,
        **pipeline.panoptic_options_from_config(self.config.dataset, is_training=False))

  @property
  def scales(self):
    return tuple(self.config.eval.scales) or (1.0,)
