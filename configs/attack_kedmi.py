"""KEDMI: learn a distribution per identity through the low-resolution GAN (Chen et al., ICCV 2021;
Knowledge-Enriched-DMI `attack.py` dist_inversion, `recovery.py`).

  python launch.py --config=configs/attack_kedmi.py --workdir=~/attacks/vgg16_kedmi \\
      --config.target.workdir=~/targets/vgg16 --config.generator.dir=~/gans/celeba64_kedmi_vgg16/gan \\
      --config.evaluation.workdir=~/targets/facenet112

Protocol defaults: mu = 0 and logvar = 1 per identity, Adam (lr 0.02) for 2400 steps on one
reparameterised sample per step (not clipped: KEDMI's clip only touches a logging copy; LOMMA clips),
identity weight 100, then 5 samples per identity, all evaluated; the first 300 identities in batches
of 60. Presets: `lomma`, `demo`, `steps=N` (see configs/attack_gmi.py).
"""

from configs import attack_gan64


def get_config(arg=None):
  return attack_gan64.get_config('kedmi', arg)
