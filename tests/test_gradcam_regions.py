"""Grad-CAM map -> predicted region -> Dice / IoU, by hand: the 0..255 threshold, both orders of
resize and threshold, empty ground truth, masks of another size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radimagenet_jax.explain import regions as sm


# ----------------------------------------------------------------------------- Dice / IoU
def test_threshold_levels_and_comparisons_by_hand():
  # floor(255 * v): 0.70 -> 178, 180.5/255 -> 180, 181/255 -> 181, 1.0 -> 255
  m = np.array([[[0.70, 180.5 / 255, 181 / 255, 1.0]]], np.float32)
  np.testing.assert_array_equal(sm.to_uint8_scale(m), [[[178, 180, 181, 255]]])
  np.testing.assert_array_equal(sm.threshold(m, 180, ">"), [[[False, False, True, True]]])
  np.testing.assert_array_equal(sm.threshold(m, 180, ">="), [[[False, True, True, True]]])
  with pytest.raises(ValueError, match="comparison='=>'"):
    sm.threshold(m, 180, "=>")


def _hand_case():
  """A 2x2 layer-resolution map, its 4x4 bilinear resize, and a 4x4 mask."""
  cams = np.array([[[1.0, 0.0], [180 / 255, 0.5]]], np.float32)
  maps = np.asarray(jax.image.resize(jnp.asarray(cams), (1, 4, 4), "bilinear"))
  mask = np.zeros((1, 4, 4), bool)
  mask[0, :2, :2] = True        # the top-left quadrant
  return cams, maps, mask


def test_dice_iou_resize_then_threshold_by_hand():
  cams, maps, mask = _hand_case()
  # Bilinear 2x2 -> 4x4: row 0 = [1, .75, .25, 0]; row 1 = interpolation with row 2 of the map.
  np.testing.assert_allclose(maps[0, 0], [1.0, 0.75, 0.25, 0.0], atol=1e-6)
  for comparison in (">", ">="):
    pred = sm.predicted_regions(maps=maps, comparison=comparison)
    scaled = np.floor(255 * maps[0])
    expect = scaled > 180 if comparison == ">" else scaled >= 180
    np.testing.assert_array_equal(pred[0], expect)
  # By hand (bilinear, half-pixel centres, edges clamped), 255 * map > 180 keeps
  # (0,0) 255, (0,1) 0.75 -> 191, (1,0) 0.75 + 0.25 * 0.706 -> 236, (1,1) 0.726 -> 185,
  # (2,0) 0.25 + 0.75 * 0.706 -> 198; (2,1) 0.678 -> 172 and (3,0) 180 are out.
  pred = sm.predicted_regions(maps=maps, comparison=">")[0]
  expected = np.zeros((4, 4), bool)
  expected[:2, :2] = True
  expected[2, 0] = True
  np.testing.assert_array_equal(pred, expected)
  dice, iou, empty = sm.dice_iou(pred[None], mask)
  # |P| = 5, |G| = 4, |P & G| = 4: Dice 8/9, IoU 4/5.
  np.testing.assert_allclose(dice, [8 / 9])
  np.testing.assert_allclose(iou, [0.8])
  assert not empty[0]


def test_dice_iou_threshold_then_resize_by_hand():
  cams, maps, mask = _hand_case()
  # At 2x2: > 180 keeps only the 1.0 cell; >= 180 keeps 1.0 and 180/255.
  gt = sm.predicted_regions(maps=maps, cams=cams, order="threshold_then_resize", comparison=">")
  np.testing.assert_array_equal(gt[0], np.kron([[1, 0], [0, 0]], np.ones((2, 2))).astype(bool))
  dice, iou, _ = sm.dice_iou(gt, mask)
  np.testing.assert_allclose([dice[0], iou[0]], [1.0, 1.0])
  ge = sm.predicted_regions(maps=maps, cams=cams, order="threshold_then_resize", comparison=">=")
  np.testing.assert_array_equal(ge[0], np.kron([[1, 0], [1, 0]], np.ones((2, 2))).astype(bool))
  dice, iou, _ = sm.dice_iou(ge, mask)
  np.testing.assert_allclose([dice[0], iou[0]], [2 * 4 / 12, 4 / 8])
  with pytest.raises(ValueError, match="order='both'"):
    sm.predicted_regions(maps=maps, cams=cams, order="both")


def test_empty_ground_truth_definition():
  pred = np.zeros((3, 2, 2), bool)
  pred[1, 0, 0] = True
  truth = np.zeros((3, 2, 2), bool)
  truth[2, 1, 1] = True
  dice, iou, empty = sm.dice_iou(pred, truth)
  np.testing.assert_array_equal(dice, [1.0, 0.0, 0.0])   # both empty / false positive / miss
  np.testing.assert_array_equal(iou, [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(empty, [True, True, False])


def test_mask_size_mismatch_is_resized_nearest_and_flagged():
  small = np.zeros((2, 3, 1), np.uint8)
  small[1, 2, 0] = 255
  same = np.zeros((4, 6), np.uint8)
  same[0, 0] = 1
  masks, resized = sm.prepare_masks([small, same], (4, 6))
  np.testing.assert_array_equal(resized, [True, False])
  expect = np.asarray(jax.image.resize(jnp.asarray(small[..., 0] > 0, jnp.float32), (4, 6),
                                       "nearest")) > 0
  np.testing.assert_array_equal(masks[0], expect)
  assert masks[0].sum() == 4 and masks[0][2:, 4:].all()
  np.testing.assert_array_equal(masks[1], same > 0)
  with pytest.raises(ValueError, match=r"mask has shape \(2, 3, 2\)"):
    sm.prepare_masks([np.zeros((2, 3, 2))], (4, 6))
