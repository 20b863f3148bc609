"""Meta-architectures: Panoptic-DeepLab (`panoptic_deeplab`) and its Axial-DeepLab presets
(`axial_deeplab`).
"""
