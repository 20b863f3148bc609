"""Every file under deeplab_axial/models imports as a module; no function hides one."""
import importlib
import os
import pkgutil
import types

import deeplab_axial.models

_ROOT = os.path.dirname(deeplab_axial.models.__file__)


def _module_names():
  """Dotted names of every .py file under deeplab_axial/models (packages included)."""
  names = []
  for directory, _, files in os.walk(_ROOT):
    relative = os.path.relpath(directory, _ROOT)
    parts = [] if relative == "." else relative.split(os.sep)
    for file in files:
      if file.endswith(".py"):
        stem = file[:-3]
        names.append(".".join(["deeplab_axial.models"] + parts +
                              ([] if stem == "__init__" else [stem])))
  return sorted(names)


def test_walk_finds_the_moved_modules():
  names = _module_names()
  assert "deeplab_axial.models.backbones.axial_resnet" in names
  assert "deeplab_axial.models.meta.panoptic_deeplab" in names
  assert len(names) >= 13


def test_every_models_file_imports_as_a_module():
  for name in _module_names():
    # `import a.b.c as m` binds getattr(a.b, "c"): a function named like the module would
    # be returned here instead of the module.
    module = importlib.import_module(name)
    parent, _, child = name.rpartition(".")
    assert isinstance(module, types.ModuleType), name
    if child:
      assert isinstance(getattr(importlib.import_module(parent), child), types.ModuleType), name


def test_no_package_attribute_hides_a_submodule():
  for name in _module_names():
    package = importlib.import_module(name)
    if not hasattr(package, "__path__"):
      continue
    for info in pkgutil.iter_modules(package.__path__):
      value = getattr(package, info.name, None)
      assert value is None or isinstance(value, types.ModuleType), (
          f"{name}.{info.name} is a {type(value).__name__}, hiding the submodule")


def test_public_functions_keep_their_names():
  for name in ("axial_resnet", "axial_deeplab", "panoptic_deeplab", "resnet50",
               "panoptic_deeplab_resnet50", "count_multiply_adds",
               "load_axialnet_state_dict"):
    assert callable(getattr(deeplab_axial.models, name)), name
    assert not isinstance(getattr(deeplab_axial.models, name), types.ModuleType), name
