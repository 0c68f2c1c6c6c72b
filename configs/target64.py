"""Targets and the evaluation model of the low-resolution protocol (GMI, KEDMI, LOMMA), on CelebA's GMI split.

  python launch.py --config=configs/target64.py:vgg16 --workdir=~/targets/vgg16 \\
      --config.data.manual_dir=/data/celeba
  python launch.py --config=configs/target64.py:facenet112 --workdir=~/targets/evaluation_112 \\
      --config.data.manual_dir=/data/celeba
  # a published checkpoint, used as it is (train.epochs = 0): evaluated on the private test split
  python launch.py --config=configs/target64.py:vgg16,imported --workdir=~/targets/vgg16_88 \\
      --config.data.manual_dir=/data/celeba --config.model.init_file=~/weights/VGG16_88.26.tar

Presets: `vgg16`, `ir152`, `facenet64` (targets, 64 px), `facenet112` (the evaluation model, IR-50 at 112 px),
any of them with `imported`; `resnet18` etc. also work here: our families at 64 px with skip control, so
RoLSS, SSF and TTS apply (configs/rolss.py's `defend` on this config).

Recipe (KEDMI `train_classifier.py`, `config/classify.json`): SGD lr 0.01, momentum 0.9, weight decay 1e-4,
batch 64, cross-entropy, a constant learning rate (its scheduler is commented out), the best test accuracy
kept; VGG16 50 epochs, IR-152 40, FaceNet64 50, FaceNet-112 30; inputs in [0, 1] (ToTensor only, hence
model.unit_range_input), KEDMI's random horizontal flip. The reference starts VGG16 from ImageNet weights and
the IR nets from face.evoLVe's MS-Celeb-1M backbones: those partial initialisations are not imported yet,
so these presets train from scratch unless model.init_file names a full checkpoint of the same network.
"""

from configs import common

EPOCHS = {'vgg16_64': 50, 'ir152_64': 40, 'facenet64': 50, 'facenet112': 30}
PRESET_MODELS = {'vgg16': 'vgg16_64', 'ir152': 'ir152_64', 'facenet64': 'facenet64', 'facenet112': 'facenet112'}


def get_config(arg=None):
  spec = {name: False for name in PRESET_MODELS}
  arg = common.parse_arg(arg, imported=False, resnet18=False, **spec)
  chosen = [name for name in PRESET_MODELS if arg[name]] or ['vgg16']
  name = 'resnet18' if arg.resnet18 else PRESET_MODELS[chosen[0]]
  config = common.base_config()
  config.data.name = 'celeba_gmi/private'
  config.data.image_size = 112 if name == 'facenet112' else 64
  config.data.augment.update(rrc_scale=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, hflip=True)
  config.model.name = name
  config.model.num_classes = 1000
  if name in EPOCHS:
    config.model.skip = () if name == 'vgg16_64' else (1.0, 1.0, 1.0, 1.0)
    config.model.unit_range_input = True
  else:
    config.model.stem = 'small'  # our ResNets at 64 px
  config.model.init_reinit = ()
  config.optim.update(name='sgd', lr=0.01, momentum=0.9, weight_decay=1e-4, lr_milestones=())
  config.train.epochs = EPOCHS.get(name, 50)
  config.train.batch_size = 64
  if arg.imported:
    config.train.epochs = 0
  return config
