"""deeplab_axial.models: backbones, Panoptic-DeepLab meta-architecture, M-Adds counter."""
from deeplab_axial.models.meta.axial_deeplab import axial_deeplab
from deeplab_axial.models.backbones.axial_resnet import axial_resnet
from deeplab_axial.models.multiply_adds import count_multiply_adds
from deeplab_axial.models.meta.panoptic_deeplab import PanopticDeepLabDecoder
from deeplab_axial.models.meta.panoptic_deeplab import PanopticHead
from deeplab_axial.models.meta.panoptic_deeplab import ResizeToReference
from deeplab_axial.models.meta.panoptic_deeplab import panoptic_deeplab
from deeplab_axial.models.meta.panoptic_deeplab import panoptic_deeplab_resnet50
from deeplab_axial.models.backbones.resnet import BottleneckBlock
from deeplab_axial.models.backbones.resnet import resnet50
from deeplab_axial.models.backbones.resnet import resnet101
from deeplab_axial.models.torch_weights import load_axialnet_state_dict
