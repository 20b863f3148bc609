"""deeplab_axial.metrics: streaming PQ and mIoU (TF graph metrics), COCO mask AP (host)."""
from deeplab_axial.metrics.instance import InstanceAP
from deeplab_axial.metrics.panoptic_quality import PanopticQuality
from deeplab_axial.metrics.semantic import MeanIoU

__all__ = ["InstanceAP", "MeanIoU", "PanopticQuality"]
