"""The shared config of the low-resolution attacks (configs/attack_gmi.py, configs/attack_kedmi.py).

Demo (CPU, minutes), on the bundled MNIST-5k digits: a 32px target of digits 0-4, an evaluation model
and a GAN of digits 5-9, then the attack:

  python launch.py --config=configs/baseline.py:demo --workdir=workdir/baseline_demo
  python launch.py --config=configs/baseline.py:demo --workdir=workdir/eval_demo \\
      --config.model.name=resnet34 --config.seed=7
  python launch.py --config=configs/gan64.py:demo --workdir=workdir/gan64_demo
  python launch.py --config=configs/attack_gmi.py:demo --workdir=workdir/gmi_demo
  python launch.py --config=configs/gan64.py:kedmi,demo --workdir=workdir/gan64_kedmi_demo
  python launch.py --config=configs/attack_kedmi.py:demo --workdir=workdir/kedmi_demo

Add `lomma` to an attack's preset (`:demo,lomma`) for LOMMA's logit loss and feature regulariser. The
demo keeps every restart (GMI) or sample (KEDMI) per class, as KEDMI's evaluation does.
"""

import ml_collections

from configs import common


def get_config(method: str, arg=None):
  arg = common.parse_arg(arg, lomma=False, demo=False, steps=0)
  gmi = method == 'gmi'
  config = ml_collections.ConfigDict()
  config.job = f'attack_{method}'
  config.seed = 9  # LOMMA's torch.manual_seed(9); latents, samples.
  config.num_devices = 0  # 0 = all devices; a batch of identities is split over them.
  config.matmul_precision = common.MATMUL_PRECISION

  config.target = ml_collections.ConfigDict()
  config.target.workdir = ''  # Workdir of the train job (64x64 targets: VGG16, IR-152, FaceNet64, ours).
  config.target.checkpoint = 'best'  # The reference code keeps the best test accuracy.

  config.generator = ml_collections.ConfigDict()
  config.generator.dir = ''  # A GAN directory of the gan64 job (`<workdir>/gan`): its critic is the prior.

  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.workdir = (
      ''  # The protocol's evaluation model (FaceNet, IR-50 at 112px) trained on the private set.
  )
  config.evaluation.checkpoint = 'best'

  config.attack = ml_collections.ConfigDict()
  config.attack.method = method  # 'gmi' or 'kedmi' (the job names it too).
  config.attack.classes = ()  # Identities to attack; () = the first num_classes.
  config.attack.num_classes = 300  # KEDMI/LOMMA evaluate identities 0-299 (GMI's own code: 0-99); 0 = all.
  config.attack.batch_size = 60  # Identities per batch (one latent or distribution each).
  config.attack.steps = 1500 if gmi else 2400  # GMI's attack.py 1500; KEDMI's recovery.py and LOMMA 2400.
  config.attack.lr = 0.02
  config.attack.momentum = 0.9  # gmi: Nesterov momentum (GMI's hand-written update = optax's nesterov).
  config.attack.identity_weight = 100.0  # lambda: prior + lambda x identity loss.
  config.attack.clip = gmi  # gmi: z to [-1, 1] after each step; kedmi: clip each sample (KEDMI no, LOMMA yes).
  config.attack.restarts = 5  # gmi: random starts per identity.
  config.attack.samples = 5  # kedmi: latents drawn per identity from its learned distribution.
  config.attack.keep = 1 if gmi else 5  # Kept per identity, by target logit: GMI keeps its best restart.
  config.attack.antialias = False  # Resizes to a classifier's input (none at 64px; 64->112 for the evaluator).
  config.attack.lomma = ml_collections.ConfigDict()  # LOMMA (Nguyen et al., CVPR 2023, Re-thinking_MI).
  config.attack.lomma.identity_loss = 'ce'  # 'ce' (GMI, KEDMI) or 'logit' (LOMMA: minus the label's logit).
  config.attack.lomma.feature_weight = 0.0  # LOMMA: 1.0 x mean((f_T - p_reg)^2); 0 = off.
  config.attack.lomma.public_samples = 5000  # LOMMA's p_reg: public images averaged (its loop takes 5,050).
  config.attack.lomma.surrogates = ()  # LOMMA's model augmentation: workdirs of models distilled from the target.
  config.public_data = common.base_config().data  # LOMMA's p_reg images: the GAN's public set.
  config.public_data.name = 'celeba_gmi/public'
  config.public_data.image_size = 64

  if arg.lomma:
    config.attack.lomma.identity_loss = 'logit'
    config.attack.lomma.feature_weight = 1.0
    config.attack.clip = True
  if arg.demo:
    config.target.workdir = 'workdir/baseline_demo'
    config.generator.dir = 'workdir/gan64_demo/gan' if gmi else 'workdir/gan64_kedmi_demo/gan'
    config.evaluation.workdir = 'workdir/eval_demo'
    config.attack.update(classes=(), num_classes=0, batch_size=5, steps=300, keep=5)  # every restart/sample shown
    config.public_data.update(name='mnist_demo/public', data_dir='data/tfds')  # digits 5-9, as the GAN's
  if arg.steps:
    config.attack.steps = arg.steps
  return config
