"""Evaluate a finished PPA attack: attack accuracy, KNN distances, FID (mi_jax/metrics/evaluate.py).

The workdir is the attack's; evaluation.json and evaluation.npz are written into it.

  python launch.py --config=configs/evaluate.py --workdir=/ckpt/r101_attack \\
      --config.evaluation.workdir=/ckpt/inception_facescrub \\
      --config.metrics.facenet_file=~/weights/20180402-114759-vggface2.pt \\
      --config.metrics.fid_inception_file=~/weights/pt_inception-2015-12-05-6726825d.pth

Without the FaceNet file there is no FaceNet distance; without the FID file FID is computed on the
evaluation model's features (evaluation.json says which). `metrics.fid_quirk=True` feeds the FID
network PPA's [-3, 1] inputs, for numbers comparable with PPA's.
"""

import ml_collections

from configs import common


def metrics_section() -> ml_collections.ConfigDict:
  metrics = ml_collections.ConfigDict()
  metrics.facenet_file = ''  # facenet-pytorch VGGFace2 weights; '' = no FaceNet distance.
  metrics.fid_inception_file = ''  # pytorch-fid weights; '' = FID on evaluation-model features.
  metrics.fid_quirk = False  # True: PPA's [-3, 1] FID inputs (comparable with PPA's numbers).
  metrics.antialias = True  # Antialiased resizes of attack images and of FID's real images (upstream
  # PPA); the RoLSS code's were not (configs/paper.py sets False).
  metrics.batch_size = 64
  metrics.cache_dir = ''  # Keeps private-set features between evaluations ('' = none).
  return metrics


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.job = 'evaluate'
  config.matmul_precision = common.MATMUL_PRECISION
  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.workdir = ''  # The evaluation model's train workdir (configs/eval_model.py).
  config.evaluation.checkpoint = 'latest'  # 'latest', 'best' or a step.
  config.metrics = metrics_section()
  return config
