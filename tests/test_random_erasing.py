"""MIDRE's RandomErasing: torchvision parity, box placement, fallback, p = 0 invariance, config checks."""

import importlib.util
import math

import ml_collections
import numpy as np
import PIL.Image
import pytest

from mi_jax.data import augment, pipeline

MIDRE_VALUE = (0.485, 0.456, 0.406)


def _image(seed, shape=(32, 32, 3)):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_erase_matches_torchvision_on_the_same_box():
  torch = pytest.importorskip('torch')
  if importlib.util.find_spec('torchvision') is None:  # not importorskip: a CPU torch makes the plain import raise
    pytest.skip('torchvision is not installed')
  from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top

  tf = torch_compat.import_torchvision().transforms.functional
  for seed in range(8):
    x = _image(seed, (24, 32, 3))
    scale, ratio = [((0.1, 0.4), (1.0, 1.0)), ((0.1, 0.8), (1.0, 1.0)), ((0.02, 0.33), (0.3, 3.3))][seed % 3]
    ours = augment.random_erasing(x, 1.0, scale, ratio, MIDRE_VALUE, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    rng.random()  # random_erasing draws the p-coin first, then the box from the same stream
    i, j, h, w = augment.random_erasing_box(24, 32, scale, ratio, rng)
    v = torch.tensor(MIDRE_VALUE)[:, None, None]  # as RandomErasing.get_params builds it
    theirs = tf.erase(torch.from_numpy(x.transpose(2, 0, 1).copy()), i, j, h, w, v).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(ours, x)


def test_box_sizes_follow_scale_and_square_ratio():
  rng = np.random.default_rng(0)
  height = width = 32
  lo, hi = 0.1, 0.4
  fractions = []
  for _ in range(2000):
    i, j, h, w = augment.random_erasing_box(height, width, (lo, hi), (1.0, 1.0), rng)
    assert h == w  # ratio (1, 1): both sides are round(sqrt(area))
    assert 0 <= i <= height - h and 0 <= j <= width - w
    # Each side is round(sqrt(area)), area in [lo, hi] * H * W: within half a pixel of the scale's sides.
    assert math.sqrt(lo * height * width) - 0.5 <= h <= math.sqrt(hi * height * width) + 0.5
    fractions.append(h * w / (height * width))
  fractions = np.array(fractions)
  assert (fractions >= 10 * 10 / 1024).all() and (fractions <= 20 * 20 / 1024).all()
  # Both ends of the range occur.
  assert fractions.min() < 0.12 and fractions.max() > 0.37
  # Non-square ratios: h / w = r (torchvision's RandomErasing; RandomResizedCrop's ratio is w / h).
  for _ in range(200):
    _, _, h, w = augment.random_erasing_box(height, width, (0.2, 0.2), (4.0, 4.0), rng)
    assert (h, w) == (round(math.sqrt(0.2 * 1024 * 4)), round(math.sqrt(0.2 * 1024 / 4)))


def test_fill_lands_exactly_in_the_box():
  for seed in range(5):
    x = _image(seed)
    out = augment.random_erasing(x, 1.0, (0.1, 0.4), (1.0, 1.0), MIDRE_VALUE, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    rng.random()
    i, j, h, w = augment.random_erasing_box(32, 32, (0.1, 0.4), (1.0, 1.0), rng)
    inside = np.zeros((32, 32), bool)
    inside[i : i + h, j : j + w] = True
    np.testing.assert_array_equal(out[inside], np.broadcast_to(np.float32(MIDRE_VALUE), (inside.sum(), 3)))
    np.testing.assert_array_equal(out[~inside], x[~inside])
    assert out.dtype == np.float32 and not np.array_equal(x, out)  # a copy; the input is untouched
  # One entry fills every channel; a grey image takes the first of three.
  one = augment.random_erasing(_image(0), 1.0, (0.3, 0.3), (1.0, 1.0), (0.5,), np.random.default_rng(1))
  assert (np.all(one == 0.5, axis=-1).sum()) == round(math.sqrt(0.3 * 1024)) ** 2
  grey = augment.random_erasing(
      _image(0, (32, 32, 1)), 1.0, (0.3, 0.3), (1.0, 1.0), MIDRE_VALUE, np.random.default_rng(1)
  )
  assert (grey == np.float32(0.485)).sum() == round(math.sqrt(0.3 * 1024)) ** 2
  with pytest.raises(ValueError, match='neither 1 nor 3'):
    augment.random_erasing(_image(0), 1.0, (0.3, 0.3), (1.0, 1.0), (0.1, 0.2), np.random.default_rng(1))
  # 'random': standard-normal noise in the box only.
  noisy = augment.random_erasing(
      np.zeros((32, 32, 3), np.float32), 1.0, (0.3, 0.3), (1.0, 1.0), 'random', np.random.default_rng(2)
  )
  side = round(math.sqrt(0.3 * 1024))
  box = np.any(noisy != 0, axis=-1)
  assert box.sum() == side * side and abs(noisy[box].std() - 1) < 0.15


def test_p_zero_draws_nothing_and_p_coin_comes_first():
  x = _image(0)
  rng = np.random.default_rng(5)
  assert augment.random_erasing(x, 0.0, (0.1, 0.4), (1.0, 1.0), MIDRE_VALUE, rng) is x
  assert rng.random() == np.random.default_rng(5).random()  # no draw consumed
  # p = 0.5: erased exactly when the first draw is < p.
  for seed in range(10):
    out = augment.random_erasing(x, 0.5, (0.1, 0.4), (1.0, 1.0), MIDRE_VALUE, np.random.default_rng(seed))
    assert (not np.array_equal(out, x)) == (np.random.default_rng(seed).random() < 0.5)


def test_fallback_leaves_the_image_unchanged():
  x = _image(3)
  rng = np.random.default_rng(0)
  # Area >= 0.99 of the image with h / w = 4: h would be ~64 > 32 on every attempt.
  assert augment.random_erasing_box(32, 32, (0.99, 1.0), (4.0, 4.0), rng) == (0, 0, 32, 32)
  out = augment.random_erasing(x, 1.0, (0.99, 1.0), (4.0, 4.0), MIDRE_VALUE, np.random.default_rng(0))
  np.testing.assert_array_equal(out, x)
  # A box as large as the image is rejected too (torchvision needs h < H and w < W).
  assert augment.random_erasing_box(8, 8, (1.0, 1.0), (1.0, 1.0), rng) == (0, 0, 8, 8)


def _element(seed, channels=3):
  img = np.random.default_rng(seed).integers(0, 256, (20, 20, channels), dtype=np.uint8)
  return {'image': img, 'label': 7}


def _without_erasing(t, element, rng):
  """TrainTransform.random_map as it was before random erasing."""
  img = augment.resize(augment.center_crop(augment.to_pil(element['image']), t.center_crop), t.image_size)
  img = augment.random_resized_crop(img, t.image_size, t.rrc_scale, t.rrc_ratio, rng)
  img = augment.color_jitter(img, t.brightness, t.contrast, t.saturation, t.hue, rng)
  if t.hflip and rng.random() < 0.5:
    img = img.transpose(PIL.Image.FLIP_LEFT_RIGHT)
  return augment.normalize(img)


def test_train_transform_p_zero_is_bit_identical_and_erasing_comes_last():
  plain = pipeline.TrainTransform(image_size=16)
  off = pipeline.TrainTransform(image_size=16, erase_p=0.0, erase_scale=(0.2, 0.3), erase_value='random')
  on = pipeline.TrainTransform(image_size=16, erase_p=1.0, erase_scale=(0.2, 0.3))
  for seed in range(4):
    element = _element(seed)
    ref_rng = np.random.default_rng(seed)
    ref = _without_erasing(plain, element, ref_rng)
    for t in (plain, off):
      rng = np.random.default_rng(seed)
      out = t.random_map(element, rng)
      np.testing.assert_array_equal(out['image'], ref)
      assert out['label'] == 7
      assert rng.bit_generator.state == ref_rng.bit_generator.state  # p = 0 draws nothing more
    # Same stream continued: p = 1 erases the p = 0 output, after Normalize.
    rng = np.random.default_rng(seed)
    erased = on.random_map(element, rng)['image']
    rng = np.random.default_rng(seed)
    before = _without_erasing(plain, element, rng)
    expected = augment.random_erasing(before, 1.0, (0.2, 0.3), (1.0, 1.0), MIDRE_VALUE, rng)
    np.testing.assert_array_equal(erased, expected)
    assert not np.array_equal(erased, before)


def _augment_config(**erasing):
  """config.data.augment as saved before random erasing existed, plus `erasing`."""
  augment_config = dict(
      rrc_scale=(0.85, 1.0), rrc_ratio=(1.0, 1.0), brightness=0.2, contrast=0.2, saturation=0.1, hue=0.1, hflip=True
  )
  return ml_collections.ConfigDict({'image_size': 16, 'augment': dict(augment_config, **erasing)})


def test_train_transform_reads_the_config_and_old_configs():
  # A config saved before the fields existed: the defaults, erasing off.
  old = _augment_config()
  t = pipeline.train_transform(old)
  assert (t.erase_p, t.erase_scale, t.erase_ratio, t.erase_value) == (0.0, (0.1, 0.4), (1.0, 1.0), MIDRE_VALUE)
  assert t == pipeline.TrainTransform(image_size=16)
  pipeline.validate_erasing(old.augment)
  midre = _augment_config(erase_p=1, erase_scale=[0.1, 0.8], erase_ratio=(1, 1), erase_value=[0.5, 0.25, 0.0])
  t = pipeline.train_transform(midre)
  assert (t.erase_p, t.erase_scale, t.erase_ratio, t.erase_value) == (1.0, (0.1, 0.8), (1.0, 1.0), (0.5, 0.25, 0.0))
  assert pipeline.train_transform(_augment_config(erase_value='random')).erase_value == 'random'
  pipeline.validate_erasing(midre.augment)


def test_base_config_has_erasing_off():
  from configs import common  # pylint: disable=g-import-not-at-top

  augment_config = common.base_config().data.augment
  pipeline.validate_erasing(augment_config)
  assert augment_config.erase_p == 0.0
  assert tuple(augment_config.erase_scale) == (0.1, 0.4) and tuple(augment_config.erase_ratio) == (1.0, 1.0)
  assert tuple(augment_config.erase_value) == MIDRE_VALUE


@pytest.mark.parametrize(
    'field, bad',
    [
        ('erase_p', -0.1),
        ('erase_p', 1.5),
        ('erase_p', True),
        ('erase_scale', (0.0, 0.4)),
        ('erase_scale', (0.5, 0.4)),
        ('erase_scale', (0.1, 1.2)),
        ('erase_scale', (0.1,)),
        ('erase_ratio', (0.0, 1.0)),
        ('erase_ratio', (2.0, 1.0)),
        ('erase_ratio', (1.0, float('nan'))),
        ('erase_value', (0.1, 0.2)),
        ('erase_value', 'noise'),
        ('erase_value', ('a', 'b', 'c')),
        ('erase_value', 0.5),
    ],
)
def test_validate_erasing_names_the_field(field, bad):
  config = ml_collections.ConfigDict({field: bad})
  with pytest.raises(ValueError, match=f'data.augment.{field}'):
    pipeline.validate_erasing(config)


def test_validate_erasing_accepts_midre_settings():
  for value in (MIDRE_VALUE, (0.0,), 'random'):
    pipeline.validate_erasing(
        ml_collections.ConfigDict(
            {'erase_p': 1.0, 'erase_scale': (0.1, 0.8), 'erase_ratio': (1, 1), 'erase_value': value}
        )
    )
  pipeline.validate_erasing(ml_collections.ConfigDict())
