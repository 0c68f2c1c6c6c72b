"""Per-example image transforms for grain, following torchvision's PIL code paths.

PPA trains targets with Resize -> RandomResizedCrop(scale 0.85-1, ratio 1) ->
ColorJitter(0.2, 0.2, 0.1, 0.1) -> RandomHorizontalFlip -> Normalize(0.5, 0.5).
These functions reproduce torchvision's parameter sampling and its PIL
implementations (ImageEnhance for brightness/contrast/saturation, uint8 HSV for
hue) with a numpy Generator in place of torch's RNG. PPA applies ColorJitter to
float tensors; the PIL path differs from it only by uint8 rounding.

MIDRE (Tran et al., TMLR 2025, "Random Erasing vs. Model Inversion") adds
RandomErasing(p=1, scale=(0.1, 0.4), ratio=(1, 1), value=(0.485, 0.456, 0.406))
after Normalize, so it acts on the normalised float array (`random_erasing`).
"""

import math

import numpy as np
import PIL.Image
import PIL.ImageEnhance


def to_pil(image: np.ndarray) -> PIL.Image.Image:
  """uint8 [H, W, C] (C = 1 or 3) -> PIL image ('L' or 'RGB')."""
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'expected a uint8 [H, W, 1|3] image, got shape {image.shape}')
  return PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def normalize(img: PIL.Image.Image) -> np.ndarray:
  """ToTensor + Normalize(0.5, 0.5): float32 [H, W, C] in [-1, 1]."""
  x = np.asarray(img, dtype=np.float32)
  if x.ndim == 2:
    x = x[..., None]
  return x / 127.5 - 1.0


def center_crop(img: PIL.Image.Image, size: int) -> PIL.Image.Image:
  """The centred size x size box (torchvision's CenterCrop offsets: (H - size) // 2, (W - size) // 2); 0 = the image."""
  if not size or img.size == (size, size):
    return img
  if size > min(img.size):
    raise ValueError(f'config.data.center_crop={size} exceeds a {img.size[0]}x{img.size[1]} image')
  left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
  return img.crop((left, top, left + size, top + size))


def resize(img: PIL.Image.Image, size: int) -> PIL.Image.Image:
  """Resize to (size, size), bilinear with antialiasing (PIL's resize filters over the support)."""
  if img.size == (size, size):
    return img
  return img.resize((size, size), PIL.Image.BILINEAR)


def _box_sides(area: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int]:
  """torchvision's draw of a random box's sides (RandomResizedCrop, RandomErasing): an area fraction uniform in
  `scale`, an aspect ratio r log-uniform in `ratio`; (round(sqrt(a r)), round(sqrt(a / r)))."""
  box_area = area * rng.uniform(scale[0], scale[1])
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  return int(round(math.sqrt(box_area * aspect))), int(round(math.sqrt(box_area / aspect)))


def random_resized_crop_box(width: int, height: int, scale, ratio, rng: np.random.Generator):
  """torchvision RandomResizedCrop.get_params: (left, top, crop_w, crop_h); its ratio is w / h."""
  for _ in range(10):
    w, h = _box_sides(width * height, scale, ratio, rng)
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  # Fallback: the whole image, clamped to the ratio range, centred.
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img, size, scale, ratio, rng):
  left, top, w, h = random_resized_crop_box(img.width, img.height, scale, ratio, rng)
  return img.resize((size, size), PIL.Image.BILINEAR, box=(left, top, left + w, top + h))


def adjust_hue(img: PIL.Image.Image, hue_factor: float) -> PIL.Image.Image:
  """torchvision F_pil.adjust_hue: shift the uint8 H channel (with wrap-around)."""
  if img.mode != 'RGB':
    return img  # hue is undefined for grey images
  h, s, v = img.convert('HSV').split()
  shift = np.uint8(int(hue_factor * 255) % 256)
  np_h = np.asarray(h, dtype=np.uint8) + shift  # uint8 arithmetic wraps, as in torchvision
  return PIL.Image.merge('HSV', (PIL.Image.fromarray(np_h, 'L'), s, v)).convert('RGB')


def color_jitter(img, brightness, contrast, saturation, hue, rng):
  """torchvision ColorJitter: the four adjustments in a random order, factors drawn uniformly."""
  factors = [
      rng.uniform(max(0.0, 1 - brightness), 1 + brightness) if brightness else None,
      rng.uniform(max(0.0, 1 - contrast), 1 + contrast) if contrast else None,
      rng.uniform(max(0.0, 1 - saturation), 1 + saturation) if saturation else None,
      rng.uniform(-hue, hue) if hue else None,
  ]
  ops = [
      lambda im, f: PIL.ImageEnhance.Brightness(im).enhance(f),
      lambda im, f: PIL.ImageEnhance.Contrast(im).enhance(f),
      lambda im, f: PIL.ImageEnhance.Color(im).enhance(f) if im.mode == 'RGB' else im,
      adjust_hue,
  ]
  for i in rng.permutation(4):
    if factors[i] is not None:
      img = ops[i](img, factors[i])
  return img


def random_erasing_box(height: int, width: int, scale, ratio, rng: np.random.Generator):
  """torchvision RandomErasing.get_params: the box (top i, left j, h, w) to erase.

  Ten attempts, each drawing an area fraction uniform in `scale` and an aspect ratio h / w log-uniform in
  `ratio` (note: h / w, where RandomResizedCrop's ratio is w / h); h = round(sqrt(area * r)),
  w = round(sqrt(area / r)); a box needs h < height and w < width (strictly; h or w may be 0, an empty box);
  then i, j uniform over the valid offsets. If all ten fail torchvision erases the whole image with the image
  itself, i.e. leaves it unchanged: this returns (0, 0, height, width), which no drawn box can equal.
  """
  for _ in range(10):
    h, w = _box_sides(height * width, scale, ratio, rng)
    if not (h < height and w < width):
      continue
    i = int(rng.integers(0, height - h + 1))
    j = int(rng.integers(0, width - w + 1))
    return i, j, h, w
  return 0, 0, height, width


def random_erasing(x: np.ndarray, p: float, scale, ratio, value, rng: np.random.Generator) -> np.ndarray:
  """torchvision RandomErasing on a normalised float32 [H, W, C] array (the output of `normalize`).

  With probability `p` (one rng.random() draw, none at all when p == 0, so a pipeline without erasing keeps
  its random stream) a `random_erasing_box` is filled with `value`: per-channel fills (one entry = every
  channel; MIDRE's (0.485, 0.456, 0.406) are values in the normalised [-1, 1] space, as its Normalize comes
  first), or 'random' for standard-normal noise per pixel and channel, drawn after the box (torchvision draws
  it between h, w and i, j; the stream is numpy's anyway). A single-channel image takes the first entry of a
  longer tuple, where torchvision would raise. Returns a new array; `x` is not modified.
  """
  if p == 0 or rng.random() >= p:
    return x
  height, width, channels = x.shape
  if isinstance(value, str):
    if value != 'random':
      raise ValueError(f"random erasing value must be per-channel floats or 'random', got {value!r}")
  else:
    value = np.atleast_1d(np.asarray(value, np.float32))
    if channels == 1:
      value = value[:1]
    elif len(value) not in (1, channels):
      raise ValueError(f'random erasing value {tuple(value.tolist())} has neither 1 nor {channels} entries')
  i, j, h, w = random_erasing_box(height, width, scale, ratio, rng)
  if (h, w) == (height, width):  # the fallback: no box fitted, the image is unchanged
    return x
  out = x.copy()
  if isinstance(value, str):
    out[i : i + h, j : j + w] = rng.standard_normal((h, w, channels), dtype=np.float32)
  else:
    out[i : i + h, j : j + w] = value
  return out
