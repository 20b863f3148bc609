"""Backbones with `res2..res5` endpoints: Axial-ResNet (`axial_resnet`) and ResNet (`resnet`).

Presets (names, widths, defaults) live in `deeplab_axial.models.catalogue`.
"""
