"""Keras layers (NHWC, serializable, any spatial size)."""
