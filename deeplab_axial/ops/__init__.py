"""deeplab_axial.ops: panoptic training targets and batched post-processing."""
from deeplab_axial.ops.panoptic_targets import generate_panoptic_targets
from deeplab_axial.ops.post_processing import find_centers
from deeplab_axial.ops.post_processing import inside_images_mask
from deeplab_axial.ops.post_processing import panoptic_inference

__all__ = ["generate_panoptic_targets", "panoptic_inference", "find_centers",
           "inside_images_mask"]
