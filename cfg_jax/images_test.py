"""Tests of the image preprocessing: padding, center crops, area resizing and channels."""
from __future__ import annotations

import numpy as np
import pytest

from cfg_jax import images


def test_a_28x28_digit_is_padded_to_32_with_black():
  digit = np.full((28, 28, 1), 200, np.uint8)
  padded = images.fit(digit, 32)
  assert padded.shape == (32, 32, 1)
  np.testing.assert_array_equal(padded[2:30, 2:30], digit)
  assert padded.sum() == digit.sum()


def test_a_wide_image_keeps_its_center_square_averaged_by_area():
  wide = np.zeros((4, 12, 3), np.uint8)
  wide[:, 4:8] = 255  # the center square, which is kept
  wide[:, 5, 0] = 0   # one dark column of red in it: half of the left 2x2 blocks
  fitted = images.fit(wide, 2)
  assert fitted.shape == (2, 2, 3)
  np.testing.assert_array_equal(fitted[..., 1:], 255)
  np.testing.assert_array_equal(fitted[..., 0], [[128, 255], [128, 255]])


def test_an_image_of_the_right_size_is_returned_as_is():
  image = np.zeros((8, 8, 3), np.uint8)
  assert images.fit(image, 8) is image


def test_channels_are_converted_by_luma_and_repetition_with_alpha_dropped():
  rgba = np.array([[[255, 0, 0, 7], [0, 0, 255, 7]]], np.uint8)
  np.testing.assert_array_equal(images.convert_channels(rgba, 1)[..., 0], [[76, 29]])
  np.testing.assert_array_equal(images.convert_channels(rgba, 3), rgba[..., :3])
  gray = np.array([[[9]]], np.uint8)
  np.testing.assert_array_equal(images.convert_channels(gray, 3), [[[9, 9, 9]]])


def test_two_channel_images_are_refused():
  with pytest.raises(ValueError, match="images with 2 channels are not supported"):
    images.convert_channels(np.zeros((4, 4, 2), np.uint8), 1)


def test_preprocess_converts_then_fits():
  rgb = np.full((28, 28, 3), 255, np.uint8)
  out = images.preprocess(rgb, (32, 32, 1))
  assert out.shape == (32, 32, 1) and out.dtype == np.uint8
  assert out[0, 0, 0] == 0 and out[16, 16, 0] == 255
