"""Trap-MID: a trapdoor trained into the classifier misleads inversion towards it (Liu & Chen, NeurIPS 2024).

Each class has a trigger t_c; the model also learns blend(x, t_c) -> c, so an attack optimising for class c
finds the trigger rather than the private features. Published settings (config/celeba/classify_trap.json):
blend ratio alpha 0.02, trapdoor loss weight beta 0.2, triggers updated by signed gradient steps of 0.01
against a discriminator, kornia augmentation with the trapdoor on. mi_jax/defenses/trapdoor.py.

  python launch.py --config=configs/trap_mid.py --workdir=/ckpt/r101_trap_mid \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/trap_mid.py:demo --workdir=workdir/trap_mid_demo

Presets: those of configs/baseline.py.
"""

from configs import baseline
from mi_jax import defenses


def get_config(arg=None):
  config, _ = baseline.with_options(arg)
  return defenses.defend(config, 'trap_mid')
