"""deeplab_axial.metrics."""
