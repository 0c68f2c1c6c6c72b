"""grain input pipelines: seeded, resumable, sharded over processes.

Determinism: the shuffle order and every augmentation draw are functions of
(config seed, global example index), so a pipeline gives the same batches for
any `worker_count` and resumes exactly from `iterator.get_state()`.
"""

import dataclasses
import math
import numbers

import grain
import jax
import numpy as np
import PIL.Image

from mi_jax import config_checks
from mi_jax.data import augment


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
  """PPA training augmentation; see `augment.py`."""

  image_size: int
  center_crop: int = 0  # a centred box of the stored image first (0 = none), e.g. LOMMA's 88 of FFHQ-128
  rrc_scale: tuple[float, float] = (0.85, 1.0)
  rrc_ratio: tuple[float, float] = (1.0, 1.0)
  brightness: float = 0.2
  contrast: float = 0.2
  saturation: float = 0.1
  hue: float = 0.1
  hflip: bool = True
  # MIDRE's RandomErasing, after Normalize (so `erase_value` is in the normalised [-1, 1] space); 0 = off.
  erase_p: float = 0.0
  erase_scale: tuple[float, float] = (0.1, 0.4)
  erase_ratio: tuple[float, float] = (1.0, 1.0)
  erase_value: tuple[float, ...] | str = (0.485, 0.456, 0.406)

  def random_map(self, element, rng: np.random.Generator):
    img = augment.resize(augment.center_crop(augment.to_pil(element['image']), self.center_crop), self.image_size)
    img = augment.random_resized_crop(img, self.image_size, self.rrc_scale, self.rrc_ratio, rng)
    img = augment.color_jitter(img, self.brightness, self.contrast, self.saturation, self.hue, rng)
    if self.hflip and rng.random() < 0.5:
      img = img.transpose(PIL.Image.FLIP_LEFT_RIGHT)
    x = augment.normalize(img)
    x = augment.random_erasing(x, self.erase_p, self.erase_scale, self.erase_ratio, self.erase_value, rng)
    return {'image': x, 'label': np.int32(element['label'])}


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
  """Centre crop (optional), resize to the model's input size and normalise to [-1, 1]."""

  image_size: int
  center_crop: int = 0

  def map(self, element):
    img = augment.resize(augment.center_crop(augment.to_pil(element['image']), self.center_crop), self.image_size)
    return {'image': augment.normalize(img), 'label': np.int32(element['label'])}


def train_transform(data_config) -> TrainTransform:
  aug = data_config.augment
  erase_value = aug.get('erase_value', TrainTransform.erase_value)
  return TrainTransform(
      image_size=data_config.image_size,
      center_crop=data_config.get('center_crop', 0),
      rrc_scale=tuple(aug.rrc_scale),
      rrc_ratio=tuple(aug.rrc_ratio),
      brightness=aug.brightness,
      contrast=aug.contrast,
      saturation=aug.saturation,
      hue=aug.hue,
      hflip=aug.hflip,
      # .get: configs saved before random erasing existed have no erase_* fields.
      erase_p=float(aug.get('erase_p', TrainTransform.erase_p)),
      erase_scale=tuple(float(v) for v in aug.get('erase_scale', TrainTransform.erase_scale)),
      erase_ratio=tuple(float(v) for v in aug.get('erase_ratio', TrainTransform.erase_ratio)),
      erase_value=erase_value if isinstance(erase_value, str) else tuple(float(v) for v in erase_value),
  )


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _real_pair(v) -> bool:
  return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_real(u) for u in v)


def validate_erasing(augment_config) -> None:
  """Checks `data.augment`'s random-erasing fields (absent ones take TrainTransform's defaults).

  Raises ValueError naming the field, as `config_checks.check_field` does: `config.data.augment.erase_p=...`.
  """
  get = lambda name: augment_config.get(name, getattr(TrainTransform, name))
  p, scale, ratio, value = get('erase_p'), get('erase_scale'), get('erase_ratio'), get('erase_value')
  check = lambda ok, name, v, expected: config_checks.check_field(ok, f'data.augment.{name}', v, expected)
  check(_is_real(p) and 0 <= p <= 1, 'erase_p', p, 'expected a probability in [0, 1]')
  check(
      _real_pair(scale) and 0 < scale[0] <= scale[1] <= 1, 'erase_scale', scale, 'expected (lo, hi), 0 < lo <= hi <= 1'
  )
  check(_real_pair(ratio) and 0 < ratio[0] <= ratio[1], 'erase_ratio', ratio, 'expected (lo, hi), 0 < lo <= hi')
  check(
      value == 'random'
      or (isinstance(value, (tuple, list)) and len(value) in (1, 3) and all(_is_real(v) for v in value)),
      'erase_value',
      value,
      "expected 1 or 3 per-channel fills (normalised [-1, 1] space) or 'random'",
  )


def eval_transform(data_config) -> EvalTransform:
  return EvalTransform(image_size=data_config.image_size, center_crop=data_config.get('center_crop', 0))


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f'batch size {global_batch_size} is not divisible by the {jax.process_count()} processes')
  return global_batch_size // jax.process_count()


def train_dataset(
    source, data_config, global_batch_size: int, num_epochs: int, seed: int, augment: bool = True
) -> grain.IterDataset:
  """Shuffled anew each epoch, augmented (unless not `augment`), batched; this process's share of every batch.

  shuffle before repeat: each epoch is its own permutation of the split (grain draws a new order per
  epoch), as a torch DataLoader with shuffle=True; shuffling the repeated set would mix epochs.
  """
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
  if augment:
    ds = ds.random_map(train_transform(data_config), seed=seed)
  else:
    ds = ds.map(eval_transform(data_config))
  ds = ds[jax.process_index() :: jax.process_count()]
  ds = ds.batch(per_process_batch_size(global_batch_size), drop_remainder=True)
  it = ds.to_iter_dataset()
  if data_config.worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.worker_count))
  return it


def eval_batches(source, data_config, global_batch_size: int):
  """Yields this process's eval batches, each padded to full size with a 0/1 `mask`.

  Every process yields the same number of batches, so sharded eval steps line up.
  """
  per_process = per_process_batch_size(global_batch_size)
  num_batches = -(-len(source) // global_batch_size)
  ds = grain.MapDataset.source(source)[jax.process_index() :: jax.process_count()]
  ds = ds.map(eval_transform(data_config)).batch(per_process)
  for i in range(num_batches):
    if i < len(ds):
      batch = ds[i]
    else:  # this process has run out of examples; it still takes part with an all-padding batch
      batch = jax.tree.map(lambda x: x[:0], ds[0])
    n = len(batch['label'])
    pad = lambda x: np.concatenate([x, np.zeros((per_process - n,) + x.shape[1:], x.dtype)])
    yield {'image': pad(batch['image']), 'label': pad(batch['label']), 'mask': pad(np.ones(n, np.float32))}
