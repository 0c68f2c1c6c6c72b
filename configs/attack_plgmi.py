"""PLG-MI: invert a target through the conditional GAN trained on its pseudo-labels (Yuan et al., AAAI 2023;
LetheSec/PLG-MI-Attack reconstruct.py and its README's command).

  python launch.py --config=configs/attack_plgmi.py --workdir=~/attacks/vgg16_plgmi \\
      --config.target.workdir=~/targets/vgg16 --config.generator.dir=~/gans/plgmi_celeba_vgg16/gan \\
      --config.evaluation.workdir=~/targets/facenet112

The GAN directory comes from the plgmi_gan job (configs/plgmi_gan.py) for the same target. Protocol
defaults: identities 0-299 in batches of 60, 5 restarts each (all kept: the reference averages its
accuracy over them), 600 Adam steps (lr 0.1, betas (0.9, 0.999)) on the max-margin loss of two augmented
views. Presets: `demo` (the digits: configs/plgmi_gan.py:demo first), `steps=N`.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, steps=0)
  config = ml_collections.ConfigDict()
  config.job = 'attack_plgmi'
  config.seed = 0  # the reference seeds restart r with r (set_random_seed(0..4)) and folds nothing else in
  config.num_devices = 0  # 0 = all devices; a batch of identities is split over them.
  config.matmul_precision = common.MATMUL_PRECISION

  config.target = ml_collections.ConfigDict()
  config.target.workdir = ''  # Workdir of the train job (the target the GAN was trained for).
  config.target.checkpoint = 'best'

  config.generator = ml_collections.ConfigDict()
  config.generator.dir = ''  # `<workdir>/gan` of the plgmi_gan job.

  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.workdir = ''  # The protocol's evaluation model (FaceNet, IR-50 at 112px).
  config.evaluation.checkpoint = 'best'

  config.attack = ml_collections.ConfigDict()
  config.attack.classes = ()  # Identities to attack; () = the first num_classes.
  config.attack.num_classes = 300  # identities 0-299; 0 = all.
  config.attack.batch_size = 60  # Identities per batch (one z each).
  config.attack.restarts = 5  # Starting points per identity (seeds 0-4).
  config.attack.keep = 5  # Kept per identity, by target confidence: all restarts, as the reference evaluates.
  config.attack.steps = 600
  config.attack.lr = 0.1
  config.attack.betas = (0.9, 0.999)
  config.attack.views = 2  # Augmented views per step, their max-margin losses summed.
  config.attack.jitter_p = 1.0  # kornia ColorJitter's default p in the attack (0.5 in GAN training).
  config.attack.antialias = False  # Resizes to a classifier's input (none at 64px; 64->112 for the evaluator).

  if arg.demo:
    config.target.workdir = 'workdir/baseline_demo'
    config.target.checkpoint = 'latest'  # as the other demo attacks and the demo GAN
    config.generator.dir = 'workdir/plgmi_gan_demo/gan'
    config.evaluation.workdir = 'workdir/eval_demo'
    config.evaluation.checkpoint = 'latest'
    config.attack.update(num_classes=0, batch_size=5)  # the 5 digits in one batch; 5 restarts each, 600 steps
  if arg.steps:
    config.attack.steps = arg.steps
  return config
