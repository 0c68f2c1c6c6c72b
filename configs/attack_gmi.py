"""GMI: invert a target through the low-resolution GAN (Zhang et al., CVPR 2020; GMI-Attack `Celeba/attack.py`).

  python launch.py --config=configs/attack_gmi.py --workdir=~/attacks/vgg16_gmi \\
      --config.target.workdir=~/targets/vgg16 --config.generator.dir=~/gans/celeba64_gmi/gan \\
      --config.evaluation.workdir=~/targets/facenet112

The GAN directory comes from the gan64 job (configs/gan64.py). Presets: `lomma` (LOMMA's logit loss and
feature regulariser; name surrogate models in attack.lomma.surrogates), `demo` (the digits, see
get_config), `steps=N`.

Protocol defaults (the reference code; where GMI's repository, KEDMI's re-run of GMI and LOMMA differ,
the field says so): 1500 steps of Nesterov SGD (lr 0.02, momentum 0.9) with z clipped to [-1, 1],
identity weight 100, 5 restarts per identity keeping the one with the highest target logit, the first
300 identities in batches of 60 (KEDMI's and LOMMA's evaluation; GMI attacked 100).
"""

from configs import attack_gan64


def get_config(arg=None):
  return attack_gan64.get_config('gmi', arg)
