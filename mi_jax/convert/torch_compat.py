"""torch next to JAX: torchvision's model definitions with a CPU build of torch, and safe weight-file loading."""

import os
import pickle
import zipfile

from mi_jax import errors


def import_torchvision():
  """Returns the torchvision module.

  torchvision 0.28 (the release paired with torch 2.13) is a CUDA build: its ops
  library fails to load with CPU torch, and its meta registrations then raise
  at import. Declaring the two op schemas they look for makes the import work;
  the model definitions need none of torchvision.ops.
  """
  import torch  # pylint: disable=g-import-not-at-top

  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except RuntimeError:
    lib = torch.library.Library('torchvision', 'DEF')
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    import_torchvision.library = lib  # keep the registration alive
    import torchvision  # pylint: disable=g-import-not-at-top
  return torchvision


class WeightFileError(errors.MiJaxError, ValueError):
  """A weight file that cannot be read as what it claims to be; nothing in it was executed."""


def _looks_like_a_damaged_zip(path: str) -> bool:
  """A zip archive (torch.save's format) whose central directory, at its end, is missing."""
  with open(path, 'rb') as f:
    return f.read(4) == b'PK\x03\x04' and not zipfile.is_zipfile(path)


def weight_file_error(
    path: str, error: BaseException, what: str = 'PyTorch weight file', refused: bool = False
) -> WeightFileError:
  """The one-line error for a weight file that failed to load with `error` (an unpickling refusal,
  a truncated archive, an empty or foreign file). `refused`: a safe loader refused what `error` names."""
  detail = (str(error).splitlines() or [''])[0]
  if isinstance(error, pickle.UnpicklingError) and detail.startswith('Weights only load failed'):
    cause = 'it holds objects other than tensors and plain containers, which the safe loader refuses'
  elif refused:
    cause = f'it references code the safe loader refuses ({detail.split(":")[0]})'
  elif os.path.exists(path) and os.path.getsize(path) == 0:
    cause = 'it is empty (0 bytes)'
  elif isinstance(error, EOFError) or _looks_like_a_damaged_zip(path):
    cause = 'it is truncated (the file ends before its contents do)'
  else:
    cause = f'it is not a {what} ({type(error).__name__}: {detail[:200]})'
  return WeightFileError(f'{path}: cannot be read as a {what}: {cause}. Nothing in it was executed.')


def load_torch_file(path: str):
  """torch.load with weights_only (no code from the file runs); every failure is one WeightFileError line."""
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency: pip install -e '.[torch]')

  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError, OSError, IndexError) as e:
    raise weight_file_error(path, e) from None
