"""The evaluation model: an Inception-v3 trained on the target's private training split.

Its top-1/top-5 on the final attack images is the attack accuracy; its penultimate features
give the evaluation KNN distance (reference/ppa.md 1.6). PPA's recipe (mission.md 2.2):
299px, ImageNet initialisation, Adam 1e-3, x0.1 at epoch 80, 100 epochs, batch 128.

  python launch.py --config=configs/eval_model.py --workdir=/ckpt/inception_facescrub \\
      --config.data.manual_dir=/data/facescrub --config.model.init_file=~/weights/inception_v3_google-0cc3c7bd.pth

init_file: torchvision's ImageNet file (its `fc` is re-initialised for 530 classes; its auxiliary
head has no place here and is dropped), or PPA's released evaluation model
(`inception_v3_facescrub.pt`, `--config.model.init_reinit="()"` to keep its head). Differences from
PPA: no auxiliary loss, and inputs in [-1, 1] without torchvision's transform_input in both training
and evaluation (mi_jax/models/inception.py).

Demo (`:demo`): Inception-v3 needs inputs of at least 75px and is slow on CPU, so the demo's
evaluation model is a narrow ResNet-34 with another seed on the same 32px private digits.
"""

from configs import baseline, common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8)
  if arg.demo or arg.tiny:
    config = baseline.get_config(('demo' if arg.demo else 'tiny') + f',epochs={arg.epochs}')
    config.model.name = 'resnet34'
    config.seed = 7
    return config
  config = common.base_config()
  config.model.name = 'inception_v3'
  config.model.skip = ()
  config.model.init_reinit = ('fc',)
  config.data.image_size = 299
  config.optim.lr_milestones = (80,)
  return config
