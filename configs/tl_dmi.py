"""TL-DMI: pretrain on public data, fine-tune only the layers from a freeze point on (Ho et al., CVPR 2024).

The `tl_dmi` job (mi_jax/defenses/tl_dmi.py): the public weights are config.model.init_file (ImageNet, as
the PPA protocol's targets start) or a first stage on config.transfer.public_data; then the private data
train the modules from config.transfer.finetune_from on (ResNet 'layer4', DenseNet 'denseblock4': the last
stage), the others frozen. The attacked model is <workdir>/stage2.

  python launch.py --config=configs/tl_dmi.py --workdir=/ckpt/r101_tl_dmi \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub \\
      --config.model.init_file=/weights/resnet101-63fe2227.pth
  python launch.py --config=configs/tl_dmi.py:demo --workdir=workdir/tl_dmi_demo

Presets: those of configs/baseline.py, plus finetune_from=... . The demo pretrains on the public digits 5-9.
"""

from configs import baseline, common
from mi_jax import defenses


def get_config(arg=None):
  config, arg = baseline.with_options(arg, finetune_from='')
  config.transfer.finetune_from = arg.finetune_from
  if arg.demo or arg.tiny:
    common.demo_public_pretraining(config, dataset='mnist_demo' if arg.demo else 'digits_demo')
  return defenses.defend(config, 'tl_dmi')
