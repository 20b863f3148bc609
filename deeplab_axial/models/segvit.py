"""SegViT model builder: plain ViT backbone + attention-to-mask head (optionally Shrunk).

Plain SegViT: ViT blocks `feature_layers` (default the paper's best [6, 8, 12] for 12
blocks, i.e. num_layers·{1/2, 2/3, 1}) feed a three-stage `AttentionToMask`, deepest
first, with cumulative masks and one output per stage.

Shrunk SegViT: block `shrink_index` (default num_layers // 3 + 1, the released ViT-L
position 9 of 24; block 5 of 12) is a `QueryDownsample`, so later blocks run at 1/32;
`QueryUpsample` decodes a learnable 1/16 query grid against the block before the
downsampling (1/16) and the last block (1/32), and a single-stage `AttentionToMask`
(no input projection) gives one independent output per decoder layer.

Images go in as float `[batch, H, W, 3]` in [0, 255] and are normalized to [-1, 1]
(mean = std = 127.5, the AugReg/JAX convention of SegViT's pretrained backbones).
"""
from typing import Optional, Sequence, Tuple

import tf_keras

from deeplab_axial.layers import segvit as segvit_layers
from deeplab_axial.layers import vit


def _default_grid(input_shape, patch_size):
  """Token grid of the training input size if known, else that of a 512² input."""
  if input_shape is not None and input_shape[0] and input_shape[1]:
    return (-(-input_shape[0] // patch_size), -(-input_shape[1] // patch_size))
  return (512 // patch_size, 512 // patch_size)


def segvit(num_classes: int, backbone: str = "vit_tiny",
           input_shape: Optional[Tuple[Optional[int], Optional[int], int]] = None,
           shrunk: bool = False, feature_layers: Optional[Sequence[int]] = None,
           shrink_index: Optional[int] = None, head_hidden_size: Optional[int] = None,
           head_num_heads: Optional[int] = None, head_num_layers: int = 3,
           position_grid_size: Optional[Tuple[int, int]] = None,
           dropout: float = 0.0, attention_dropout: float = 0.0, head_dropout: float = 0.1,
           name: Optional[str] = None, **backbone_overrides) -> tf_keras.Model:
  """Builds SegViT.

  Args:
    num_classes: K, number of semantic classes.
    backbone: a `layers.vit.VIT_PRESETS` name (`vit_tiny`, `vit_small`, `vit_base`).
    input_shape: `(height, width, 3)`, None entries for any size (default).
    shrunk: use the Shrunk structure (query downsampling + query upsampling).
    feature_layers: plain SegViT: 1-based ViT blocks feeding the ATM stages (any order;
      they are decoded deepest first).
    shrink_index: Shrunk: 1-based block replaced by `QueryDownsample`.
    head_hidden_size: decoder width d (default: half the ViT width, as released).
    head_num_heads: decoder heads (default: d // 32, at least 1).
    head_num_layers: decoder layers per ATM stage / per QU memory.
    position_grid_size: ViT position-embedding grid and QU query grid (default: the
      token grid of `input_shape`, else 32×32).
    dropout, attention_dropout: ViT dropout rates; head_dropout: decoder dropout.
    name: model name (default `segvit_<backbone>[_shrunk]`).
    **backbone_overrides: extra `VisionTransformer` arguments (e.g. num_layers).

  Returns:
    `tf_keras.Model` mapping images to a dict:
      `semantic_logits` float32 `[batch, H, W, K]`: class scores Σ_q p(c|q)·mask_q of
        the last output, bilinearly upsampled (≥ 0; argmax gives the prediction);
      `class_logits` `[batch, T, K, K + 1]`, `mask_logits` `[batch, T, H/16, W/16, K]`
        for the loss (`losses.SegVitLoss`), T = 3 by default.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if backbone not in vit.VIT_PRESETS:
    raise ValueError(f"backbone must be one of {sorted(vit.VIT_PRESETS)}, got {backbone!r}")
  input_shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
  if len(input_shape) != 3:
    raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
  config = {**vit.VIT_PRESETS[backbone], **backbone_overrides}
  num_layers, width = config["num_layers"], config["hidden_size"]
  patch_size = config.get("patch_size", 16)
  grid_size = tuple(position_grid_size or _default_grid(input_shape, patch_size))
  head_hidden_size = head_hidden_size or max(width // 2, 1)
  head_num_heads = head_num_heads or max(head_hidden_size // 32, 1)

  if shrunk:
    shrink_index = shrink_index or num_layers // 3 + 1
    if not 2 <= shrink_index <= num_layers:
      raise ValueError(f"shrink_index must be in [2, {num_layers}] (the block before it "
                       f"feeds QueryUpsample), got {shrink_index!r}")
    output_layers = (shrink_index - 1, num_layers)
  else:
    if shrink_index is not None:
      raise ValueError(f"shrink_index={shrink_index!r} needs shrunk=True")
    output_layers = tuple(feature_layers or sorted(
        {num_layers // 2, (2 * num_layers) // 3, num_layers} - {0}))
  config.update(position_grid_size=grid_size, output_layers=output_layers,
                shrink_index=shrink_index if shrunk else None, dropout=dropout,
                attention_dropout=attention_dropout)

  images = tf_keras.Input(shape=input_shape, name="images")
  normalized = tf_keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(images)
  features = vit.VisionTransformer(name="backbone", **config)(normalized)
  head_kwargs = {"num_classes": num_classes, "hidden_size": head_hidden_size,
                 "num_heads": head_num_heads, "num_layers": head_num_layers,
                 "dropout": head_dropout}
  if shrunk:
    upsampled = segvit_layers.QueryUpsample(
        head_hidden_size, head_num_heads, query_grid_size=grid_size,
        num_layers=head_num_layers, dropout=head_dropout, name="query_upsample")(
            [features[f"layer{index}"] for index in output_layers])
    head = segvit_layers.AttentionToMask(project_inputs=False, deep_supervision="layers",
                                         name="attention_to_mask", **head_kwargs)
    outputs = head([upsampled])
  else:
    deepest_first = sorted(output_layers, reverse=True)
    head = segvit_layers.AttentionToMask(deep_supervision="stages",
                                         name="attention_to_mask", **head_kwargs)
    outputs = head([features[f"layer{index}"] for index in deepest_first])
  semantic = segvit_layers.AtmSemanticScores(name="semantic_logits")(
      [outputs["class_logits"], outputs["mask_logits"], images])
  model_name = name or f"segvit_{backbone}{'_shrunk' if shrunk else ''}"
  return tf_keras.Model(images, {"semantic_logits": semantic, **outputs}, name=model_name)
