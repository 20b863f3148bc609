"""deeplab_axial.models."""
