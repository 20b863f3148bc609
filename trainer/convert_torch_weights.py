r"""Converts an official csrhddlam axialnet state_dict to a TF checkpoint.

  python trainer/convert_torch_weights.py --input=axial50s.pth --name=axial50s \
      --output=/tmp/axial50s/ckpt

writes a `tf.train.Checkpoint(backbone=model)` at the `--output` prefix, where `model` is
the Axial-ResNet that `model.backbone {name, span, stem: "conv", output_stride}` builds.
Use it as `train.initial_checkpoint` with `train.init_modules: ["backbone"]`. The input is
a PyTorch `.pth` (needs torch: the `[torch]` extra) or an `.npz` of the same names.
Relative tables are padded/cropped to the built model's table lengths (see
`deeplab_axial.models.torch_weights`), e.g. to fine-tune with `--span=65`.
"""
from deeplab_axial import cli

cli.start_quietly()

from absl import flags  # noqa: E402  (after start_quietly, as everything below)

flags.DEFINE_string("input", None, "Official state_dict: .pth/.pt/.pth.tar or .npz.")
flags.DEFINE_string("output", None, "Checkpoint prefix to write, e.g. /tmp/axial/ckpt.")
flags.DEFINE_string("name", "axial50s", "Backbone variant (axial26s, axial50s, ...).")
flags.DEFINE_float("width_multiplier", 0.0,
                   "Channel width factor s of the official AxialAttentionNet (0 = the "
                   "variant's: 0.5 for *s, 0.75 for *m, 1.0 for *l).")
flags.DEFINE_integer("span", 0, "0 = global (as the official model); odd m = local span.")
flags.DEFINE_integer("output_stride", 16, "Backbone output stride (8, 16 or 32).")
flags.DEFINE_integer("input_size", 0,
                     "Square input size fixing the global tables to the official "
                     "per-stage lengths (0 = fixed 255-long tables, as the config builder).")
flags.DEFINE_integer("num_classes", 0,
                     "Keep the official classifier with this many classes (0 = endpoints "
                     "only, the backbone of a segmentation model).")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from deeplab_axial.models.backbones.axial_resnet import axial_resnet_from_options
  from deeplab_axial.models.torch_weights import load_axialnet_state_dict
  from deeplab_axial.models.torch_weights import read_state_dict
  from deeplab_axial.protos import experiment_pb2
  flag_values = flags.FLAGS
  options = experiment_pb2.BackboneOptions(
      name=flag_values.name, span=flag_values.span, stem="conv",
      output_stride=flag_values.output_stride, width_multiplier=flag_values.width_multiplier)
  size = flag_values.input_size
  model = axial_resnet_from_options(
      options, input_shape=(size, size, 3) if size else None,
      num_classes=flag_values.num_classes or None)
  loaded = load_axialnet_state_dict(model, read_state_dict(flag_values.input))
  path = tf.train.Checkpoint(backbone=model).write(flag_values.output)
  print(f"Loaded {len(loaded)} tensors into {model.name}; wrote {path}")


if __name__ == "__main__":
  cli.run(main)
