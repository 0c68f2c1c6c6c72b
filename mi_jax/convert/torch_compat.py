"""Importing torchvision's model definitions next to a CPU build of torch."""


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
