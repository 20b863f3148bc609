"""Tests for the colouring, boundary and overlay helpers on hand-built cases."""
import numpy as np
import pytest

from deeplab_axial import visualization


def test_colormap_first_entries_are_the_pascal_voc_colours():
  colormap = visualization.create_colormap()
  assert colormap.shape == (256, 3) and colormap.dtype == np.uint8
  want = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
          (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0)]
  assert [tuple(color) for color in colormap[:10]] == want
  assert len({tuple(color) for color in colormap}) == 256


def test_colorize_semantic():
  semantic = np.array([[0, 1], [2, 1]])
  colored = visualization.colorize_semantic(semantic)
  assert colored.dtype == np.uint8 and colored.shape == (2, 2, 3)
  np.testing.assert_array_equal(colored[0, 1], (128, 0, 0))
  np.testing.assert_array_equal(colored[1, 0], (0, 128, 0))
  custom = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint8)
  np.testing.assert_array_equal(visualization.colorize_semantic(semantic, custom)[1, 0],
                                (7, 8, 9))


def test_colorize_panoptic_gives_instances_distinct_nearby_colours():
  divisor = 1000
  panoptic = np.array([[3 * divisor, 5 * divisor + 1, 5 * divisor + 1],
                       [3 * divisor, 5 * divisor + 2, 5 * divisor + 2],
                       [5 * divisor, 5 * divisor + 2, 3 * divisor]])
  colormap = visualization.create_colormap()
  colored = visualization.colorize_panoptic(panoptic, divisor, perturbation=30)
  # Stuff/crowd (instance 0) keeps its class colour.
  np.testing.assert_array_equal(colored[0, 0], colormap[3])
  np.testing.assert_array_equal(colored[2, 0], colormap[5])
  # Pixels of one segment share one colour; two instances of class 5 differ.
  np.testing.assert_array_equal(colored[0, 1], colored[0, 2])
  np.testing.assert_array_equal(colored[1, 1], colored[2, 1])
  instance_colors = {tuple(colored[0, 1]), tuple(colored[1, 1]), tuple(colormap[5])}
  assert len(instance_colors) == 3
  for pixel in (colored[0, 1], colored[1, 1]):
    assert np.abs(pixel.astype(int) - colormap[5].astype(int)).max() <= 30
  np.testing.assert_array_equal(
      colored, visualization.colorize_panoptic(panoptic, divisor, perturbation=30))


def test_instance_boundaries_hand_case():
  panoptic = np.array([[1, 1, 2, 2],
                       [1, 1, 2, 2],
                       [1, 1, 2, 2],
                       [3, 3, 3, 3]])
  want = np.array([[0, 1, 1, 0],
                   [0, 1, 1, 0],
                   [1, 1, 1, 1],
                   [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(visualization.instance_boundaries(panoptic), want)
  thick = visualization.instance_boundaries(np.array([[1, 1, 1, 1, 2, 2, 2, 2]]), thickness=2)
  np.testing.assert_array_equal(thick, [[0, 0, 1, 1, 1, 1, 0, 0]])
  assert not visualization.instance_boundaries(np.full((3, 3), 7)).any()


def test_overlay_hand_numbers():
  image = np.full((2, 2, 3), 100, np.uint8)
  colored = np.full((2, 2, 3), 200, np.uint8)
  blended = visualization.overlay(image, colored, alpha=0.25)
  np.testing.assert_array_equal(blended, 125)
  boundaries = np.array([[True, False], [False, False]])
  painted = visualization.overlay(image[..., 0], colored, 1.0, boundaries, (1, 2, 3))
  np.testing.assert_array_equal(painted[0, 0], (1, 2, 3))
  np.testing.assert_array_equal(painted[1, 1], (200, 200, 200))


@pytest.mark.parametrize("call, message", [
    (lambda: visualization.colorize_semantic(np.array([[-1]])), "non-negative"),
    (lambda: visualization.colorize_semantic(np.array([[3]]), np.zeros((3, 3))), "colours"),
    (lambda: visualization.colorize_semantic(np.zeros((2, 2, 1), int)), "semantic"),
    (lambda: visualization.colorize_panoptic(np.zeros((2, 2), int), 0), "label_divisor"),
    (lambda: visualization.instance_boundaries(np.zeros((2, 2), int), 0), "thickness"),
    (lambda: visualization.overlay(np.zeros((2, 2, 3)), np.zeros((3, 2, 3))), "colored"),
    (lambda: visualization.overlay(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), 2.0), "alpha"),
    (lambda: visualization.create_colormap(0), "num_colors"),
])
def test_bad_inputs_raise(call, message):
  with pytest.raises(ValueError, match=message):
    call()
