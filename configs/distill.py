"""LOMMA's model augmentation: a surrogate learns the target's outputs on public images (Re-thinking_MI
`train_augmented_model.py`, `config/celeba/training_augmodel/celeba.json`).

  python launch.py --config=configs/distill.py --workdir=~/surrogates/vgg16_mobilenet \\
      --config.distill.teacher=~/targets/vgg16 --config.distill.data.manual_dir=/data/celeba \\
      --config.data.manual_dir=/data/celeba --config.model.name=mobilenet_v2

Then name the surrogates' workdirs in the attack: --config.attack.lomma.surrogates="('~/surrogates/a', ...)".

Recipe: KL(teacher || student) at temperature 1 on the public set without augmentation, SGD (momentum 0.9,
weight decay 1e-4, lr 0.01; the released files say 0.02), batch 64, 20 epochs; the student's accuracy on
the private test split is reported. LOMMA's students are EfficientNet-B0/B1/B2 from ImageNet weights;
here any model of the registry (config.model.name, config.model.init_file) serves.

Presets: `demo` (a ResNet-18 surrogate of configs/baseline.py:demo's target on digits 5-9).
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, epochs=20)
  config = common.base_config()
  config.data.name = 'celeba_gmi/private'  # the test split the student is measured on; its input size
  config.data.image_size = 64
  config.model.name = 'resnet18'
  config.model.num_classes = 1000
  config.distill.data.name = 'celeba_gmi/public'
  config.distill.data.augment.update(rrc_scale=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
  config.distill.data.augment.hflip = False  # 'gan' mode: no augmentation
  config.optim.update(name='sgd', lr=0.01, momentum=0.9, weight_decay=1e-4, lr_milestones=())
  config.train.epochs = arg.epochs
  config.train.batch_size = 64
  if arg.demo:
    common.demo_data(config)  # private digits 0-4 at 32 px: the test split
    common.demo_model(config)
    config.distill.teacher = 'workdir/baseline_demo'
    config.distill.data.update(name='mnist_demo/public', data_dir=config.data.data_dir)
    config.train.epochs = min(arg.epochs, 5)
  return config
