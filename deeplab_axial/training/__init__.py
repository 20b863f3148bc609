"""deeplab_axial.training."""
