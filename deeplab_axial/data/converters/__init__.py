"""deeplab_axial.data.converters."""
