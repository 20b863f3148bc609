"""Experiment configs: load a textproto, apply overrides, validate, print.

    config = load_config("configs/coco/axial_deeplab_s.textproto",
                         overrides=["train.batch_size: 8",
                                    "solver.lookahead { enable: true }",
                                    "eval.scales: [0.5, 1.0]"])

An override is a dotted field path followed by a text-format value or message body
(`a.b.c: value`, `a.b { c: 1 }`). Overrides apply in order after the file. A repeated field
named in an override *replaces* the file's list (it is not appended to), also when it sits
inside an override's message body. Singular fields are overwritten, messages merged.

Repeated fields without values get the defaults documented in `experiment.proto`, so a
loaded config holds explicit values. Every problem found is reported in one `ConfigError`
(a `ValueError`) naming the file and line (or the override), the field, the offending value
and what is allowed. Training crops that are not k·output_stride + 1 only warn
(`ConfigWarning`). Batch-size divisibility by the replica count is the trainer's check.

Relative dataset file patterns are resolved by `resolve_file_pattern`.
"""
import difflib
import os
import re
from typing import Callable, Dict, Iterable, List, Optional, Tuple
import warnings

from google.protobuf import descriptor_pool
from google.protobuf import text_format

from deeplab_axial.models import catalogue
from deeplab_axial import config_usage
from deeplab_axial import errors
from deeplab_axial.protos import experiment_pb2

ExperimentOptions = experiment_pb2.ExperimentOptions

# The model catalogue's backbone presets (deeplab_axial.models.catalogue).
BACKBONES = catalogue.names()
META_ARCHITECTURES = ("panoptic_deeplab", "semantic", "classification")
CONTEXT_HEADS = ("none", "danet", "isa", "jpu", "gated_scnn", "segvit")
OPTIMIZERS = ("sgd", "adam", "adamw", "radam")
SCHEDULES = ("constant", "poly", "cosine", "step")
MIXED_PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
EVAL_METRICS = {"panoptic_deeplab": ("pq", "miou", "ap"), "semantic": ("miou",),
                "classification": ("top1", "top5")}
DEFAULT_EVAL_METRICS = {"panoptic_deeplab": ("pq", "miou"), "semantic": ("miou",),
                        "classification": ("top1", "top5")}

_CHOICES = {
    "model.backbone.name": BACKBONES,
    "model.backbone.stem": catalogue.STEMS,
    "model.meta_architecture": META_ARCHITECTURES,
    "model.context_head.type": CONTEXT_HEADS,
    "model.context_head.danet.channel_attention_mode": ("official", "paper"),
    "solver.optimizer": OPTIMIZERS,
    "solver.schedule": SCHEDULES,
    "solver.warmup_type": ("linear",),
    "train.mixed_precision": MIXED_PRECISION_POLICIES,
}


def _meta(config):
  return config.model.meta_architecture


def _head_is(head_type):
  return lambda config: config.model.context_head.type == head_type


# (path, default, when to fill it): defaults of repeated fields (see experiment.proto).
_REPEATED_DEFAULTS: Tuple[Tuple[str, Callable, Callable], ...] = (
    ("model.decoder.atrous_rates", lambda c: (6, 12, 18),
     lambda c: _meta(c) != "classification"),
    ("model.decoder.semantic_low_level_projections", lambda c: (64, 32),
     lambda c: _meta(c) != "classification"),
    ("model.decoder.instance_low_level_projections", lambda c: (32, 16),
     lambda c: _meta(c) == "panoptic_deeplab"),
    ("model.context_head.isa.partition", lambda c: (8, 8), _head_is("isa")),
    ("model.context_head.jpu.dilation_rates", lambda c: (1, 2, 4, 8), _head_is("jpu")),
    ("model.context_head.jpu.atrous_rates", lambda c: (12, 24, 36), _head_is("jpu")),
    ("model.context_head.gated_scnn.shape_stream_filters", lambda c: (32, 16, 8),
     _head_is("gated_scnn")),
    ("model.context_head.gated_scnn.atrous_rates", lambda c: (6, 12, 18),
     _head_is("gated_scnn")),
    ("eval.scales", lambda c: (1.0,), lambda c: True),
    ("eval.metrics", lambda c: DEFAULT_EVAL_METRICS.get(_meta(c), ()), lambda c: True),
)

# augmentation.photometric, then its jitter ranges.
_PHOTOMETRIC_FIELDS = ("photometric", "brightness_max_delta", "contrast_min_factor",
                       "contrast_max_factor", "saturation_min_factor",
                       "saturation_max_factor", "hue_max_delta")

_HEADER = ("# proto-file: deeplab_axial/protos/experiment.proto\n"
           "# proto-message: ExperimentOptions\n")


class ConfigError(errors.UserError, ValueError):
  """An invalid experiment config; the message lists every problem found."""


class ConfigWarning(UserWarning):
  """A config value that works but is probably not what was meant."""


# -------------------------------------------------------------------------------------
# Public API.
# -------------------------------------------------------------------------------------


def load_config(path: str, overrides: Iterable[str] = ()) -> ExperimentOptions:
  """Reads the textproto at `path`, applies `overrides` and validates the result.

  Raises:
    FileNotFoundError: `path` does not exist.
    ConfigError: a syntax error, unknown field, wrong type or invalid value, in the file or
      in an override.
  """
  return parse_config(_read_text(path), source=path, overrides=overrides)


def parse_config(text: str, source: str = "<string>",
                 overrides: Iterable[str] = ()) -> ExperimentOptions:
  """Like `load_config`, for config text; `source` names it in error messages."""
  config = ExperimentOptions()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ConfigError(f"{source}:{_explain_parse_error(e)}") from None
  locations = _Locations(source, _field_lines(text))
  for override in overrides:
    _apply_override(config, override, locations)
  _fill_repeated_defaults(config)
  _Validator(config, locations).run()
  return config


def field_value(config: ExperimentOptions, path: str):
  """The value of the field at dotted `path` (e.g. "solver.lookahead.enable")."""
  message, name = _resolve(config, path)
  return getattr(message, name)


def config_to_text(config: ExperimentOptions) -> str:
  """Text-format `config`, with the proto-file header; `parse_config` reads it back."""
  return _HEADER + text_format.MessageToString(config_usage.unwrap(config))


def is_filled_default(config: ExperimentOptions, path: str, values) -> bool:
  """True when repeated field `path` holds `values` because `load_config` filled in its
  documented default (so they are not a setting of the user's)."""
  for default_path, default, applies in _REPEATED_DEFAULTS:
    if default_path == path and applies(config):
      return list(values) == list(default(config))
  return False


def resolve_file_pattern(pattern: str, data_dir: Optional[str] = None) -> str:
  """Expands `${VAR}`/`~` in a dataset file pattern and anchors relative ones at data_dir.

  Args:
    pattern: glob from `dataset.train_file_pattern` / `eval_file_pattern`.
    data_dir: directory for relative patterns; None = `$DEEPLAB_AXIAL_DATA_DIR`, else
      `./data_cache`.

  Raises:
    ValueError: the pattern names an environment variable that is not set.
  """
  expanded = os.path.expanduser(os.path.expandvars(pattern))
  unset = re.findall(r"\$\{?(\w+)", expanded)
  if unset:
    raise ValueError(f"dataset file pattern {pattern!r} uses unset environment variable(s) "
                     f"{', '.join(unset)}")
  if os.path.isabs(expanded) or "://" in expanded:
    return expanded
  if data_dir is None:
    data_dir = os.environ.get("DEEPLAB_AXIAL_DATA_DIR", "data_cache")
  return os.path.join(data_dir, expanded)


# -------------------------------------------------------------------------------------
# Reading and parsing.
# -------------------------------------------------------------------------------------


def _read_text(path):
  if "://" in path:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"config file not found: {path}")
    with tf.io.gfile.GFile(path, "r") as f:
      return f.read()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  with open(path, encoding="utf-8") as f:
    return f.read()


_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


def _explain_parse_error(error: text_format.ParseError) -> str:
  """'line:col: message', with the valid field names for an unknown field."""
  message = re.sub(r"^\d+:\d+ : ", "", str(error))
  unknown = _UNKNOWN_FIELD.search(message)
  if unknown:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(unknown.group(1))
    names = [f.name for f in descriptor.fields]
    close = difflib.get_close_matches(unknown.group(2), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    message = (f"unknown field {unknown.group(2)!r} in {descriptor.name}.{hint} "
               f"Valid fields: {', '.join(names)}.")
  elif "Expected string" in message:
    message += ' (string values are quoted, e.g. optimizer: "radam")'
  location = (f"{error.GetLine()}:{error.GetColumn()}: " if error.GetLine() is not None
              else " ")
  return location + message


# Tokens of the text format that matter for locating fields.
_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|'
                    r'[A-Za-z_][\w.]*|-?[\d.][\w.+-]*|\n|[{}<>:\[\],;]|\S')


def _field_lines(text: str) -> Dict[str, int]:
  """Maps each dotted field path set in `text` to the line where it first appears."""
  tokens, line = [], 1
  for match in _TOKEN.finditer(text):
    token = match.group(0)
    if token == "\n":
      line += 1
    elif not token.startswith("#"):
      tokens.append((token, line))
  lines, stack = {}, []
  for i, (token, line) in enumerate(tokens):
    following = tokens[i + 1][0] if i + 1 < len(tokens) else ""
    if token in ("}", ">"):
      if stack:
        stack.pop()
    elif re.fullmatch(r"[A-Za-z_]\w*", token) and following in (":", "{", "<"):
      path = ".".join(stack + [token])
      lines.setdefault(path, line)
      after = tokens[i + 2][0] if i + 2 < len(tokens) else ""
      if following in ("{", "<") or after in ("{", "<"):
        stack.append(token)
  return lines


class _Locations:
  """Where a field's value came from: a file line, an override, or the default."""

  def __init__(self, source: str, lines: Dict[str, int]):
    self._source = source
    self._lines = lines
    self._overrides: Dict[str, str] = {}

  def set_by_override(self, path: str, override: str):
    self._overrides[path] = override

  def describe(self, path: str) -> str:
    if path in self._overrides:
      return f"--config_override {self._overrides[path]!r}"
    if path in self._lines:
      return f"{self._source}:{self._lines[path]}"
    return f"{self._source} (default value)"


_OVERRIDE = re.compile(r"\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*([:{<].*)", re.S)


def _apply_override(config: ExperimentOptions, override: str, locations: _Locations):
  """Merges one 'a.b.c: value' / 'a.b { ... }' override into `config`."""
  match = _OVERRIDE.fullmatch(override)
  if not match:
    raise ConfigError(f"--config_override {override!r}: expected 'field.path: value' or "
                      "'field.path { ... }', e.g. 'train.batch_size: 8'")
  path, body = match.group(1).split("."), match.group(2)
  fragment = "".join(f"{name} {{ " for name in path[:-1]) + f"{path[-1]} {body}"
  fragment += " }" * (len(path) - 1)
  delta = ExperimentOptions()
  try:
    text_format.Parse(fragment, delta)
  except text_format.ParseError as e:
    message = _explain_parse_error(e).split(": ", 1)[-1]
    raise ConfigError(f"--config_override {override!r}: {message}") from None
  for field_path in _merge_replacing_lists(config, delta):
    locations.set_by_override(field_path, override)


def _merge_replacing_lists(target, delta, prefix="") -> List[str]:
  """Merges `delta` into `target`; repeated fields in `delta` replace. Returns set paths."""
  paths = []
  for field, value in delta.ListFields():
    path = prefix + field.name
    if field.is_repeated:
      container = getattr(target, field.name)
      del container[:]
      container.MergeFrom(value)
      paths.append(path)
    elif field.message_type is not None:
      child = getattr(target, field.name)
      child.SetInParent()
      paths += _merge_replacing_lists(child, value, path + ".")
    else:
      setattr(target, field.name, value)
      paths.append(path)
  return paths


def _resolve(config, path: str):
  """(parent message, field name) of a dotted path."""
  *parents, name = path.split(".")
  message = config
  for parent in parents:
    message = getattr(message, parent)
  return message, name


def _fill_repeated_defaults(config: ExperimentOptions):
  for path, default, applies in _REPEATED_DEFAULTS:
    message, name = _resolve(config, path)
    if applies(config) and not getattr(message, name):
      getattr(message, name).extend(default(config))


# -------------------------------------------------------------------------------------
# Validation.
# -------------------------------------------------------------------------------------


class _Validator:
  """Collects every invalid value of a config, then raises one ConfigError."""

  def __init__(self, config: ExperimentOptions, locations: _Locations):
    self._config = config
    self._locations = locations
    self._errors: List[str] = []

  def _value(self, path):
    message, name = _resolve(self._config, path)
    value = getattr(message, name)
    return list(value) if hasattr(value, "extend") else value

  def error(self, path, expected):
    self._errors.append(f"{self._locations.describe(path)}: {path} = {self._value(path)!r}: "
                        f"{expected}")

  def warn(self, path, advice):
    warnings.warn(f"{self._locations.describe(path)}: {path} = {self._value(path)!r}: "
                  f"{advice}", ConfigWarning, stacklevel=4)

  def check(self, path, ok: Callable, expected: str):
    if not ok(self._value(path)):
      self.error(path, expected)

  def positive(self, *paths):
    for path in paths:
      self.check(path, lambda v: v > 0, "must be > 0")

  def non_negative(self, *paths):
    for path in paths:
      self.check(path, lambda v: v >= 0, "must be >= 0")

  def fraction(self, path, low_open=False, high_open=True):
    low, high = ("(" if low_open else "["), (")" if high_open else "]")
    self.check(path, lambda v: (v > 0 if low_open else v >= 0) and (
        v < 1 if high_open else v <= 1), f"must be in {low}0, 1{high}")

  def int_list(self, path, length=None, allow_empty=False):
    def ok(values):
      if not values:
        return allow_empty
      return (length is None or len(values) == length) and all(v > 0 for v in values)
    size = f"{length} " if length else ""
    self.check(path, ok, f"must be a list of {size}positive integers" +
               (" or empty" if allow_empty else ""))

  def run(self):
    self._choices()
    self._model()
    self._dataset()
    self._solver()
    self._loss_train_eval()
    self._settings_nothing_reads()
    if self._errors:
      count = len(self._errors)
      if count == 1:  # One line, as every other input error of the CLI.
        raise ConfigError(f"invalid config value: {self._errors[0]}")
      raise ConfigError(f"{count} invalid config values:\n  " + "\n  ".join(self._errors))

  def _choices(self):
    for path, allowed in _CHOICES.items():
      self.check(path, lambda v, a=allowed: v in a,
                 f"must be one of {', '.join(repr(a) for a in allowed)}")

  def _model(self):
    c = self._config.model
    self.check("model.backbone.span", lambda v: v == 0 or (v > 0 and v % 2 == 1),
               "must be 0 (global attention) or a positive odd span, e.g. 65")
    self.check("model.backbone.output_stride", lambda v: v in (8, 16, 32),
               "must be 8, 16 or 32")
    self.non_negative("model.backbone.width_multiplier")
    self.positive("model.backbone.num_heads", "model.batch_norm_epsilon")
    self.fraction("model.batch_norm_momentum")
    self.fraction("model.classifier_dropout")
    self._global_span_fits()
    if c.backbone.recompute and self._backbone_family() != "axial_resnet" and (
        c.backbone.name in BACKBONES):
      self.error("model.backbone.recompute", "recomputes axial blocks, so it applies to "
                 f"the Axial-ResNet backbones ({', '.join(catalogue.names('axial_resnet'))})"
                 f" only, not to model.backbone.name {c.backbone.name!r}; remove it")
    is_vit = self._backbone_family() == "vit"
    if is_vit != (c.context_head.type == "segvit") and c.backbone.name in BACKBONES:
      self.error("model.backbone.name", "ViT backbones (vit_*) go with context_head.type "
                 "'segvit' and segvit needs a ViT backbone")
    if c.meta_architecture == "classification":
      return
    if c.meta_architecture == "panoptic_deeplab" and c.context_head.type != "none":
      self.error("model.context_head.type", "must be 'none' for meta_architecture "
                 "'panoptic_deeplab'; context heads need meta_architecture 'semantic'")
    self.int_list("model.decoder.atrous_rates", length=3)
    self.int_list("model.decoder.semantic_low_level_projections", length=2)
    if c.meta_architecture == "panoptic_deeplab":
      self.int_list("model.decoder.instance_low_level_projections", length=2)
    self.positive("model.decoder.aspp_channels", "model.decoder.semantic_decoder_channels",
                  "model.decoder.instance_decoder_channels",
                  "model.panoptic_head.semantic_head_channels",
                  "model.panoptic_head.center_head_channels",
                  "model.panoptic_head.offset_head_channels")
    self.fraction("model.decoder.aspp_dropout")
    self.fraction("model.context_head.dropout")
    head = c.context_head.type
    if head == "isa":
      self.int_list("model.context_head.isa.partition", length=2)
      self.positive("model.context_head.isa.channels")
      self.non_negative("model.context_head.isa.key_channels")
    elif head == "jpu":
      self.int_list("model.context_head.jpu.dilation_rates")
      self.int_list("model.context_head.jpu.atrous_rates", length=3)
      self.positive("model.context_head.jpu.filters", "model.context_head.jpu.aspp_channels")
    elif head == "danet":
      self.non_negative("model.context_head.danet.inter_channels",
                        "model.context_head.danet.aux_loss_weight")
      self.positive("model.context_head.danet.reduction")
    elif head == "gated_scnn":
      self.int_list("model.context_head.gated_scnn.shape_stream_filters")
      self.int_list("model.context_head.gated_scnn.atrous_rates", length=3)
      self.positive("model.context_head.gated_scnn.aspp_filters",
                    "model.context_head.gated_scnn.decoder_filters",
                    "model.context_head.gated_scnn.low_level_filters")
      self.non_negative("model.context_head.gated_scnn.boundary_loss_weight",
                        "model.context_head.gated_scnn.dual_task_loss_weight")
    elif head == "segvit":
      self.positive("model.context_head.segvit.atm_layers")
      self.non_negative("model.context_head.segvit.head_hidden_size",
                        "model.context_head.segvit.head_num_heads")

  def _settings_nothing_reads(self):
    """Refuses, with the reason, set fields that the config's task never reads (the
    systemic check is `config_usage`: rehearsal names any other unread field)."""
    c = self._config
    set_paths = [path for path, _ in config_usage.set_fields(
        c, lambda path, values: is_filled_default(c, path, values))]

    def refuse(prefixes, reason):
      for path in set_paths:
        if any(path == p or path.startswith(p + ".") for p in prefixes):
          self.error(path, reason)

    meta = c.model.meta_architecture
    if meta == "classification":
      refuse(["dataset.resize_long_side"], "classification resizes the shorter side to "
             "eval.resize_size and centre-crops; resize_long_side is for segmentation")
      refuse(["dataset.augmentation." + name for name in _PHOTOMETRIC_FIELDS],
             "classification training applies the random-resized crop and flip only, no "
             "photometric jitter")
      refuse(["dataset.augmentation.min_scale_factor", "dataset.augmentation.max_scale_factor",
              "dataset.augmentation.scale_factor_step"], "classification training uses the "
             "random-resized crop (augmentation.random_resized_crop), not random scaling")
      refuse(["dataset.targets"], "Panoptic-DeepLab training targets; classification has "
             "none")
    elif not c.dataset.augmentation.photometric:
      refuse(["dataset.augmentation." + name for name in _PHOTOMETRIC_FIELDS[1:]],
             "a jitter range, used only with dataset.augmentation.photometric: true")
    self._loss_terms_nothing_reads(refuse)
    if meta == "classification":
      refuse(["export.crop_size"], "a classifier is exported with its evaluation "
             "preprocessing (resize, centre crop) in the graph and always runs at that crop")

  def _loss_terms_nothing_reads(self, refuse):
    meta = self._config.model.meta_architecture
    if meta == "semantic" and self._config.model.context_head.type == "segvit":
      refuse(["loss"], "SegViT trains with its ATM loss (class CE + mask focal + dice with "
             "the paper's weights); the loss section does not apply")
      return
    unused = {"classification": ("semantic_weight", "semantic_top_k", "center_weight",
                                 "offset_weight"),
              "semantic": ("center_weight", "offset_weight"),
              "panoptic_deeplab": ("label_smoothing",)}.get(meta, ())
    refuse(["loss." + name for name in unused],
           f"not a term of the {meta} loss (see experiment.proto LossOptions)")

  def _backbone_family(self):
    name = self._config.model.backbone.name
    return catalogue.backbone(name).family if name in BACKBONES else None

  def _global_span_fits(self):
    """Global-span tables hold every explicit crop (the builder re-checks the dataset's
    eval crop when eval.crop_size is empty)."""
    c = self._config
    scale = max(list(c.eval.scales) or [1.0])
    sizes = {"dataset.crop_size": list(c.dataset.crop_size),
             "export.crop_size": list(c.export.crop_size)}
    if c.eval.crop_size:
      sizes["eval.crop_size" + (f" x eval.scales {scale}" if scale != 1.0 else "")] = [
          int(round(side * scale)) for side in c.eval.crop_size]
    problem = catalogue.global_span_problem(
        c.model.backbone.name, c.model.backbone.stem, c.model.backbone.span,
        {field: size for field, size in sizes.items() if len(size) == 2})
    if problem:
      self.error("model.backbone.span", problem)

  def _crop(self, path, allow_empty):
    self.int_list(path, length=2, allow_empty=allow_empty)
    stride = self._config.model.backbone.output_stride
    sizes = self._value(path)
    # ViTs (SegViT) have no align-corners decoder; their crops are patch multiples.
    if (self._config.model.meta_architecture != "classification" and len(sizes) == 2 and
        self._backbone_family() != "vit" and
        stride in (8, 16, 32) and any(s > 0 and (s - 1) % stride for s in sizes)):
      advice = [max(1, round((s - 1) / stride)) * stride + 1 for s in sizes]
      self.warn(path, f"sizes of the form k * output_stride + 1 keep align-corners "
                f"resizing aligned at output stride {stride}, e.g. {advice}")

  def _dataset(self):
    if not self._config.dataset.dataset_info_file:
      self.check("dataset.name", bool, "must name a dataset descriptor, e.g. "
                 "'coco_panoptic', 'cityscapes_panoptic', 'mapillary_vistas', 'imagenet' or "
                 "'shapes', or set dataset.dataset_info_file to a converter's "
                 "dataset_info.json")
    self._crop("dataset.crop_size", allow_empty=False)
    augmentation = self._config.dataset.augmentation
    self.positive("dataset.augmentation.min_scale_factor", "dataset.shuffle_buffer_size")
    self.non_negative("dataset.resize_long_side")
    self.non_negative("dataset.augmentation.scale_factor_step")
    if augmentation.max_scale_factor < augmentation.min_scale_factor:
      self.error("dataset.augmentation.max_scale_factor",
                 f"must be >= min_scale_factor ({augmentation.min_scale_factor})")
    self._photometric()
    self._resize_long_side()
    self.positive("dataset.targets.sigma")
    self.non_negative("dataset.targets.small_instance_area",
                      "dataset.targets.small_instance_weight")

  def _photometric(self):
    self.non_negative("dataset.augmentation.brightness_max_delta")
    self.check("dataset.augmentation.hue_max_delta", lambda v: 0 <= v <= 0.5,
               "must be in [0, 0.5] turns of the hue circle")
    augmentation = self._config.dataset.augmentation
    for name in ("contrast", "saturation"):
      low = getattr(augmentation, f"{name}_min_factor")
      self.non_negative(f"dataset.augmentation.{name}_min_factor")
      if getattr(augmentation, f"{name}_max_factor") < low:
        self.error(f"dataset.augmentation.{name}_max_factor",
                   f"must be >= {name}_min_factor ({low})")

  def _resize_long_side(self):
    """Evaluation pads the resized images to the eval crop, so it must hold them."""
    long_side = self._config.dataset.resize_long_side
    eval_crop = self._value("eval.crop_size")
    if long_side > 0 and len(eval_crop) == 2 and min(eval_crop) < long_side:
      self.error("eval.crop_size", f"must be >= dataset.resize_long_side ({long_side}) on "
                 f"both sides: resized evaluation images are padded to it")

  def _solver(self):
    s = self._config.solver
    self.positive("solver.learning_rate", "solver.poly_power",
                  "solver.backbone_learning_rate_multiplier", "solver.lookahead.sync_period")
    self.fraction("solver.momentum")
    self.fraction("solver.beta_1")
    self.fraction("solver.beta_2", low_open=True)
    if s.optimizer == "radam" and 2.0 / (1.0 - s.beta_2) - 1.0 <= 4.0:
      self.error("solver.beta_2", "must be > 0.6 for radam (rho_inf = 2/(1 - beta_2) - 1 "
                 "must exceed 4)")
    self.non_negative("solver.epsilon", "solver.weight_decay", "solver.clip_gradient_norm",
                      "solver.warmup_steps")
    self.fraction("solver.lookahead.slow_step_size", low_open=True, high_open=False)
    self.fraction("solver.warmup_start_factor", high_open=False)
    for pattern in s.weight_decay_exclude:
      try:
        re.compile(pattern)
      except re.error as e:
        self.error("solver.weight_decay_exclude", f"{pattern!r} is not a regex: {e}")
    if not 0 <= s.end_learning_rate <= s.learning_rate:
      self.error("solver.end_learning_rate", f"must be in [0, learning_rate = "
                 f"{s.learning_rate}]")
    if s.schedule == "step":
      boundaries = list(s.step_boundaries)
      if not boundaries or any(b <= a for a, b in zip([0] + boundaries, boundaries)):
        self.error("solver.step_boundaries", "the step schedule needs positive, strictly "
                   "increasing step boundaries")
      if len(s.step_learning_rates) != len(boundaries):
        self.error("solver.step_learning_rates",
                   f"needs one rate per boundary ({len(boundaries)})")
      self.check("solver.step_learning_rates", lambda v: all(r >= 0 for r in v),
                 "must be >= 0")
    if s.warmup_steps >= self._config.train.steps > 0:
      self.error("solver.warmup_steps", f"must be < train.steps ({self._config.train.steps})")

  def _loss_train_eval(self):
    self.non_negative("loss.semantic_weight", "loss.center_weight", "loss.offset_weight")
    self.fraction("loss.semantic_top_k", low_open=True, high_open=False)
    self.fraction("loss.label_smoothing")
    self.positive("train.batch_size", "train.steps", "train.steps_per_loop",
                  "train.checkpoint_interval", "train.max_to_keep", "train.summary_interval")
    if self._config.train.init_modules and not self._config.train.initial_checkpoint:
      self.error("train.init_modules", "needs train.initial_checkpoint")
    if self._config.train.allow_partial_init and not self._config.train.initial_checkpoint:
      self.error("train.allow_partial_init", "needs train.initial_checkpoint")
    self.positive("eval.interval", "eval.batch_size", "eval.resize_size", "eval.top_k")
    self.non_negative("eval.steps", "eval.stuff_area", "eval.continuous_eval_timeout")
    self.check("eval.scales", lambda v: bool(v) and all(s > 0 for s in v),
               "must be positive scale factors")
    allowed = EVAL_METRICS.get(self._config.model.meta_architecture, ())
    self.check("eval.metrics", lambda v: all(m in allowed for m in v),
               f"metrics for meta_architecture {self._config.model.meta_architecture!r} "
               f"are {', '.join(repr(a) for a in allowed)}")
    if self._config.model.meta_architecture != "panoptic_deeplab":
      self.check("eval.save_predictions", lambda v: not v,
                 "writes panoptic predictions, so it needs meta_architecture "
                 "'panoptic_deeplab'; write semantic maps with `python trainer/predict.py`")
    self.fraction("eval.center_threshold", high_open=False)
    self.check("eval.nms_kernel", lambda v: v > 0 and v % 2 == 1, "must be a positive odd "
               "kernel size")
    self._crop("eval.crop_size", allow_empty=True)
    self.positive("export.version")
    self._crop("export.crop_size", allow_empty=True)
