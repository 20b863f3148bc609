"""The model catalogue: every named backbone and model preset with its defaults.

One home for preset names, architectures and default hyper-parameters. The Python API
(`models.axial_resnet`, `models.resnet50`, `models.axial_deeplab`), the config builder
(`models.builder`) and config validation (`deeplab_axial.config`) all read it, so a preset
gets the same model whatever the entry point. Pure Python: no TensorFlow objects.

Backbone presets (`BACKBONES`, `model.backbone.name` in configs):

| name                  | blocks        | width | layout   | BN momentum / epsilon     |
|-----------------------|---------------|-------|----------|---------------------------|
| axial_resnet_s/m/l/xl | 3, 4, 6, 3    | 0.5 / 0.75 / 1 / 2 | paper | 0.99 / 1e-3 (DeepLab2) |
| axial26s              | 1, 2, 4, 1    | 0.5   | official | 0.9 / 1e-5 (PyTorch)      |
| axial50s/m/l          | 3, 4, 6, 3    | 0.5 / 0.75 / 1 | official | 0.9 / 1e-5 (PyTorch) |
| resnet50, resnet101   | 3, 4, 6/23, 3 | 1     | —        | 0.99 / 1e-3 (DeepLab2)    |
| vit_tiny/small/base   | —             | —     | —        | (LayerNorm; no BN)        |

Every Axial-ResNet preset defaults to the conv stem and global attention (span None), the
ImageNet Conv-Stem Axial-ResNet of AD §3.2; configs and arguments choose other stems/spans.

The **layout** is fixed by the name, never by a flag:
  * `official` (csrhddlam's PyTorch `axialnet` names `axial26s`, `axial50s/m/l`): the
    stride of a block's width attention is an average pool after it, and a global-span
    table has 2k−1 rows for the feature length k the block sees at a static `input_shape`
    (the PyTorch `kernel_size`; needed to load its weights unchanged). Built for dynamic
    input sizes (every config), the tables hold `MAX_GLOBAL_LENGTH` positions instead.
  * `paper` (`axial_resnet_*`): striding right after each axis's attention (AD §3.2) and
    global-span tables of `MAX_GLOBAL_LENGTH` = 255 positions (509 rows, DeepLab2's
    MAX_SPAN; AD Tab. 1 counts such tables), so any crop up to 255 features long per axis
    uses the same weights.

BN defaults: the official presets keep PyTorch's BatchNorm (momentum 0.1, i.e. Keras 0.9,
epsilon 1e-5), the statistics csrhddlam's checkpoints were trained with; every other preset
uses DeepLab2's (0.99, 1e-3; papers.md §1.5 and §4.3), the values of the shipped configs.
A config's `model.batch_norm_momentum/epsilon` overrides them only when set.

Model presets (`MODELS`, `models.axial_deeplab(name, ...)`): Axial-DeepLab S/M/L/XL —
the Axial-ResNet preset of the same width with the inception stem, span 65 (the paper's
main panoptic results, papers.md §2.4), output stride 16 and no ASPP (AD §3.2, Tab. 2);
`panoptic_deeplab_resnet50` — ResNet-50 with ASPP at output stride 16 (AD Tab. 6 baseline).
"""
import dataclasses
from typing import Dict, Optional, Sequence, Tuple

# Longest axis of a global-span table for dynamic input sizes: 2 * 255 - 1 = 509 rows.
MAX_GLOBAL_LENGTH = 255
# Local span of the Full Axial-ResNet's axial stem (AD §4.1).
STEM_SPAN = 15
STEMS = ("conv", "inception", "axial")
LAYOUTS = ("official", "paper")
# Input stride at which each stem hands over to stage 2 (the stride of the features the
# first global-span block attends over): the conv/inception stems end in a stride-2
# max-pool (total 4); the axial stem's first block strides by 2.
_STEM_STRIDE = {"conv": 4, "inception": 4, "axial": 2}

_DEEPLAB2_BN = (0.99, 1e-3)
_PYTORCH_BN = (0.9, 1e-5)
_AXIAL_DEEPLAB = "Wang et al., Axial-DeepLab, ECCV 2020"


@dataclasses.dataclass(frozen=True)
class BackbonePreset:
  """A named backbone and its defaults.

  Attributes:
    name: preset name (`model.backbone.name`).
    family: "axial_resnet", "resnet" or "vit" (which builder makes it).
    block_counts: blocks in stages 2..5 (empty for ViTs).
    width_multiplier: stage-width multiplier (Axial-ResNet).
    layout: "official" or "paper" for Axial-ResNets (see the module docstring), else "".
    stem: default stem.
    span: default attention span (None = global).
    batch_norm_momentum, batch_norm_epsilon: default BatchNormalization values.
    reference: where the preset comes from.
  """
  name: str
  family: str
  block_counts: Tuple[int, ...] = ()
  width_multiplier: float = 1.0
  layout: str = ""
  stem: str = "conv"
  span: Optional[int] = None
  batch_norm_momentum: float = _DEEPLAB2_BN[0]
  batch_norm_epsilon: float = _DEEPLAB2_BN[1]
  reference: str = ""

  @property
  def stride_placement(self) -> str:
    """Where an Axial-ResNet block strides (`layers.axial_blocks.AxialBlock`)."""
    return "after_width" if self.layout == "official" else "per_axis"


@dataclasses.dataclass(frozen=True)
class ModelPreset:
  """A named Panoptic-DeepLab model: a backbone preset and the settings that differ.

  Attributes:
    name: preset name (`models.axial_deeplab(name, ...)`).
    backbone: the `BackbonePreset` name.
    stem, span, output_stride: backbone settings (span None = global).
    use_aspp: ASPP in both decoders (False: one 1×1 conv + BN + ReLU, Axial-DeepLab).
    batch_norm_momentum, batch_norm_epsilon: every BatchNormalization of the model.
    reference: where the preset comes from.
  """
  name: str
  backbone: str
  stem: str
  span: Optional[int]
  output_stride: int
  use_aspp: bool
  batch_norm_momentum: float = _DEEPLAB2_BN[0]
  batch_norm_epsilon: float = _DEEPLAB2_BN[1]
  reference: str = ""


def _paper_axial(name, width):
  return BackbonePreset(name, "axial_resnet", (3, 4, 6, 3), width, layout="paper",
                        reference=f"{_AXIAL_DEEPLAB}, §3.2, Tab. 1-2")


def _official_axial(name, blocks, width):
  return BackbonePreset(name, "axial_resnet", blocks, width, layout="official",
                        batch_norm_momentum=_PYTORCH_BN[0],
                        batch_norm_epsilon=_PYTORCH_BN[1],
                        reference="csrhddlam/axial-deeplab lib/models/axialnet.py")


BACKBONES: Dict[str, BackbonePreset] = {preset.name: preset for preset in (
    _paper_axial("axial_resnet_s", 0.5),
    _paper_axial("axial_resnet_m", 0.75),
    _paper_axial("axial_resnet_l", 1.0),
    _paper_axial("axial_resnet_xl", 2.0),
    _official_axial("axial26s", (1, 2, 4, 1), 0.5),
    _official_axial("axial50s", (3, 4, 6, 3), 0.5),
    _official_axial("axial50m", (3, 4, 6, 3), 0.75),
    _official_axial("axial50l", (3, 4, 6, 3), 1.0),
    BackbonePreset("resnet50", "resnet", (3, 4, 6, 3),
                   reference="He et al., CVPR 2016 (torchvision v1.5 bottlenecks)"),
    BackbonePreset("resnet101", "resnet", (3, 4, 23, 3),
                   reference="He et al., CVPR 2016 (torchvision v1.5 bottlenecks)"),
    BackbonePreset("vit_tiny", "vit", reference="Dosovitskiy et al., ICLR 2021 (DeiT-Ti)"),
    BackbonePreset("vit_small", "vit", reference="Dosovitskiy et al., ICLR 2021 (DeiT-S)"),
    BackbonePreset("vit_base", "vit", reference="Dosovitskiy et al., ICLR 2021 (ViT-B)"),
)}


def _axial_deeplab(name, backbone):
  return ModelPreset(name, backbone, stem="inception", span=65, output_stride=16,
                     use_aspp=False, reference=f"{_AXIAL_DEEPLAB}, §3.2, Tab. 2")


MODELS: Dict[str, ModelPreset] = {preset.name: preset for preset in (
    _axial_deeplab("axial_deeplab_s", "axial_resnet_s"),
    _axial_deeplab("axial_deeplab_m", "axial_resnet_m"),
    _axial_deeplab("axial_deeplab_l", "axial_resnet_l"),
    _axial_deeplab("axial_deeplab_xl", "axial_resnet_xl"),
    ModelPreset("panoptic_deeplab_resnet50", "resnet50", stem="conv", span=None,
                output_stride=16, use_aspp=True,
                reference="Cheng et al., Panoptic-DeepLab, CVPR 2020; AD Tab. 6"),
)}


def names(family: Optional[str] = None) -> Tuple[str, ...]:
  """Backbone preset names, all or of one family ("axial_resnet", "resnet", "vit")."""
  return tuple(name for name, preset in BACKBONES.items()
               if family is None or preset.family == family)


def backbone(name: str) -> BackbonePreset:
  """The backbone preset `name`; ValueError listing the valid names otherwise."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
  return BACKBONES[name]


def model(name: str) -> ModelPreset:
  """The model preset `name`; ValueError listing the valid names otherwise."""
  if name not in MODELS:
    raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(MODELS)}")
  return MODELS[name]


def batch_norm(name: str, momentum: Optional[float] = None,
               epsilon: Optional[float] = None) -> Dict[str, float]:
  """`batch_norm_momentum/epsilon` keyword arguments: the given values, else the preset's."""
  preset = MODELS[name] if name in MODELS else backbone(name)
  return {"batch_norm_momentum": preset.batch_norm_momentum if momentum is None else momentum,
          "batch_norm_epsilon": preset.batch_norm_epsilon if epsilon is None else epsilon}


def longest_global_attention_axis(stem: str, sizes: Sequence[Sequence[int]]) -> int:
  """Longest axis a global-span Axial-ResNet block attends over, for inputs of `sizes`.

  The first block of stage 2 sees the stem's output (stride 4, or 2 for the axial stem)
  and every later block a map at most that long, whatever the output stride; sizes round
  up as the strided convs/pools do.

  Args:
    stem: one of `STEMS`.
    sizes: input (height, width) pairs (train crop, eval crop times its largest scale, ...).
  """
  stride = _STEM_STRIDE[stem]
  return max((-(-int(side) // stride) for size in sizes for side in size), default=0)


def global_span_problem(backbone_name: str, stem: str, span: Optional[int],
                        sizes: Dict[str, Sequence[int]]) -> Optional[str]:
  """Why global-span tables cannot hold some input size, or None when they can.

  Configs build dynamic-size models, whose global-span tables hold `MAX_GLOBAL_LENGTH`
  positions per axis; an input whose stage-2 features are longer fails at run time.

  Args:
    backbone_name: backbone preset name (non-Axial-ResNets always fit).
    stem: the backbone's stem.
    span: the attention span (0 or None = global; local spans fit any size).
    sizes: where each input size comes from (e.g. "dataset.crop_size") → (height, width).
  """
  preset = BACKBONES.get(backbone_name)
  if preset is None or preset.family != "axial_resnet" or span or stem not in STEMS:
    return None
  too_long = {field: size for field, size in sizes.items()
              if longest_global_attention_axis(stem, [size]) > MAX_GLOBAL_LENGTH}
  if not too_long:
    return None
  largest = MAX_GLOBAL_LENGTH * _STEM_STRIDE[stem]
  found = "; ".join(f"{field} {list(size)} gives "
                    f"{longest_global_attention_axis(stem, [size])}-long features"
                    for field, size in too_long.items())
  return (f"global attention holds feature axes of at most {MAX_GLOBAL_LENGTH} positions, "
          f"but {found} after the {stem} stem (stride {_STEM_STRIDE[stem]}): set a local "
          f"span (e.g. model.backbone.span: 65, as Axial-DeepLab at large inputs) or keep "
          f"every crop side <= {largest} px")
