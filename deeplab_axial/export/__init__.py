"""deeplab_axial.export."""
