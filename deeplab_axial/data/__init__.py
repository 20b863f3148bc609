"""deeplab_axial.data."""
