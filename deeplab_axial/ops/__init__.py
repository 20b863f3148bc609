"""deeplab_axial.ops."""
