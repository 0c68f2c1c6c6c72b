"""Importers for the evaluation networks' weight files: FaceNet and the FID Inception.

  import_facenet(path)          facenet-pytorch's InceptionResnetV1 file, e.g. the VGGFace2
                                one (20180402-114759-vggface2.pt); its classifier `logits`
                                is dropped (PPA uses the embeddings).
  import_fid_inception(path)    pytorch-fid's FID Inception file
                                (pt_inception-2015-12-05-6726825d.pth).

Each returns (module, variables); the files are read with weights_only, and a file
that does not fit is an error listing every missing or misshapen tensor.
"""

import os

import jax
import numpy as np

from mi_jax.convert import torchvision as tv_convert
from mi_jax.models import facenet, inception

FACENET_SIZE = 160
FID_SIZE = 299


def _import(path: str, module, input_size: int, what: str, drop=(), **apply_kwargs):
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what}: {path!r} is not a file')
  # Every leaf comes from the file, so only the tree's shapes are needed: no init to compile.
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), np.zeros((1, input_size, input_size, 3), np.float32), **apply_kwargs)
  )
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  converted = tv_convert.to_flax(tv_convert.read_state_dict(path), 'generic')
  variables, _ = tv_convert.merge_into(converted, fresh, drop=drop)
  return module, variables


def import_facenet(path: str):
  return _import(path, facenet.InceptionResnetV1(), FACENET_SIZE, 'the FaceNet weight file', drop=('logits',))


def import_fid_inception(path: str):
  return _import(
      path,
      inception.Inception3(num_classes=1008, fid=True),
      FID_SIZE,
      'the FID Inception weight file',
      drop=('fc',),
      features_only=True,
  )
