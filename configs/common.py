"""Shared config pieces: the full field set with the paper's defaults, and demo presets.

Every experiment file calls `base_config()` and changes what differs, so every
run has the same fields and any of them can be overridden from the command line
(`--config.model.name=resnet101`). Unknown fields fail at start.
"""

import ml_collections

from mi_jax.defenses import label_smoothing, mid, transfer, trapdoor


def parse_arg(arg, **spec):
  """Parses a preset string such as 'demo' or 'demo,epochs=3' against typed defaults.

  A bare word sets a bool field to True; `key=value` is cast to the default's type.
  """
  config = ml_collections.ConfigDict(spec)
  for part in filter(None, (arg or '').split(',')):
    key, has_value, value = part.partition('=')
    if key not in spec:
      raise ValueError(f'unknown config preset option {key!r}; known: {sorted(spec)}')
    default = spec[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f'preset option {key!r} needs a value ({key}=...)')
      config[key] = True
    elif isinstance(default, bool):
      if value not in ('True', 'False', 'true', 'false', '1', '0'):
        raise ValueError(f'preset option {key}={value!r}: expected a boolean')
      config[key] = value in ('True', 'true', '1')
    else:
      config[key] = type(default)(value)
  return config


# The paper ran in true float32 (V100s); A100/H100 default to TF32 for float32 convs and matmuls in JAX.
MATMUL_PRECISION = 'highest'


def base_config() -> ml_collections.ConfigDict:
  """Every field a job may read, set to the PPA/paper recipe (FaceScrub, 224px, ResNet)."""
  config = ml_collections.ConfigDict()
  config.job = 'train'  # Which job launch.py runs: see mi_jax/jobs.py.
  config.seed = 42  # Model init, data order and augmentation.
  config.num_devices = 0  # Devices to shard the batch over; 0 = all (required on multi-host).
  config.matmul_precision = MATMUL_PRECISION  # jax_default_matmul_precision for the job (set by mi_jax/jobs.py).

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet18'  # resnet18/34/50/101/152, densenet121/161/169/201.
  config.model.num_classes = 530  # Must match the data set (FaceScrub: 530).
  config.model.skip = (1.0, 1.0, 1.0, 1.0)  # Per stage: 1 keep, 0 remove, k in (0,1) scale, 'learn'.
  config.model.width = 0  # 0 = the architecture's own; demos shrink it (ResNet: stem/stage-1
  # channels; DenseNet: stem channels, growth = width // 2).
  config.model.skip_mode = 'truncate'  # DenseNet: 'truncate' (official code) or 'scale' (see densenet.py).
  config.model.stem = 'imagenet'  # 'imagenet' (torchvision) or 'small' (3x3/1, for <= 64px).
  config.model.dtype = 'float32'  # Compute dtype: float32 or bfloat16.
  config.model.vib_dim = 0  # MID's bottleneck width k (mi_jax/models/vib.py); 0 = none.
  config.model.init_file = ''  # torchvision/PPA .pth to start from (e.g. ImageNet weights).
  config.model.init_reinit = ('fc', 'classifier')  # Leaves of init_file not to load: the head (other class count).
  config.model.transform_input = False  # Inception-v3: torchvision's re-normalisation to ImageNet statistics.
  config.model.aux_logits = False  # Inception-v3: the auxiliary head (trained, unused in evaluation).
  config.model.unit_range_input = False  # VGG16-64/IR nets: (x + 1) / 2 first, for the reference's [0, 1] weights.
  config.model.legacy_stage3_split = 1.0  # ResNet: the RoLSS release's split=0.8 leftover (models/resnet.py); 1 = off.
  # ViT, MaxViT: which residual of a transformer layer the skip factor scales: 'all', 'attention' or 'mlp' (the
  # official code's `mode`).
  config.model.residual_branch = 'all'
  config.model.maxvit_layers = ('none',) * 4  # MaxViT per stage: layers taking k, e.g. 'grid', 'mbconv+window', 'none'.
  config.model.maxvit_leading_layers = (0,) * 4  # MaxViT, per stage: how many leading layers that covers; 0 = all.
  config.model.maxvit_mbconv_factor_on = 'branch'  # MaxViT: k on the MBConv 'branch' (official) or the 'identity'.
  config.model.maxvit_bn_momentum = (
      0.99  # MaxViT: BatchNorm momentum, torch's convention (official 0.99; torchvision 0.01).
  )
  config.model.maxvit_partition_size = 0  # MaxViT: window/grid side; 0 = the architecture's own (7).

  config.data = ml_collections.ConfigDict()
  config.data.name = 'facescrub'  # facescrub, celeba1000, image_folder/<name>, mnist_demo/private, ...
  config.data.data_dir = '~/tensorflow_datasets'  # Where prepared array_record files live.
  config.data.manual_dir = ''  # Raw download for facescrub/celeba1000/image_folder.
  config.data.test_fraction = 0.0  # image_folder only: held-out share for a 'test' split.
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.image_size = 224  # Model input size (square).
  config.data.center_crop = 0  # A centred box of each stored image before the resize; 0 = none (FFHQ-64: 88).
  config.data.worker_count = 0  # grain worker processes; 0 = in-process (CPU/CI).
  config.data.bad_images = 'fail'  # Unreadable/truncated/empty image files at build: 'fail' naming each, or 'skip'.
  config.data.rebuild_if_changed = False  # manual_dir's files differ from the prepared set's: rebuild, else refuse.
  config.data.prepare_on = 'process_0'  # Multi-process: 'process_0' (shared data_dir) or 'each_host' (local disks).
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.rrc_scale = (0.85, 1.0)  # RandomResizedCrop area range.
  config.data.augment.rrc_ratio = (1.0, 1.0)  # RandomResizedCrop aspect-ratio range.
  config.data.augment.brightness = 0.2  # ColorJitter.
  config.data.augment.contrast = 0.2
  config.data.augment.saturation = 0.1
  config.data.augment.hue = 0.1
  config.data.augment.hflip = True  # RandomHorizontalFlip(0.5).
  config.data.augment.erase_p = 0.0  # RandomErasing probability, last, after Normalize (MIDRE: 1.0); 0 = off.
  config.data.augment.erase_scale = (0.1, 0.4)  # RandomErasing area range (MIDRE: (0.1, 0.4) or (0.1, 0.8)).
  config.data.augment.erase_ratio = (1.0, 1.0)  # RandomErasing aspect-ratio (h / w) range; (1, 1) = square.
  config.data.augment.erase_value = (0.485, 0.456, 0.406)  # Per-channel fill; normalised [-1, 1] space as MIDRE.

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'adam'  # adam (torch-style L2), adamw, sgd.
  config.optim.lr = 1e-3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.momentum = 0.9  # sgd only.
  config.optim.weight_decay = 0.0
  config.optim.lr_milestones = (75, 90)  # Epochs at which lr *= lr_gamma.
  config.optim.lr_gamma = 0.1

  config.bido = ml_collections.ConfigDict()  # BiDO-HSIC (mi_jax/defenses/bido.py); off while a1 = a2 = 0.
  config.bido.a1 = 0.0  # Weight of sum_j nHSIC(X, Z_j): input information in the features.
  config.bido.a2 = 0.0  # Weight of -sum_j nHSIC(Z_j, Y): label information in the features.
  config.bido.sigma = 5.0  # Gaussian kernel width (the official default).
  config.bido.label_kernel = 'linear'  # Kernel on one-hot labels: 'linear' (official default) or 'gaussian'.

  # The other training-time defenses, each off here (their defaults: mi_jax/defenses/<module>.py): MID's KL
  # weight (its bottleneck is model.vib_dim), label smoothing (LS/NegLS), TL-DMI's freeze point, Trap-MID.
  config.mid = mid.default_config()
  config.label_smoothing = label_smoothing.default_config()
  config.transfer = transfer.default_config()
  config.trapdoor = trapdoor.default_config()

  config.distill = ml_collections.ConfigDict()  # LOMMA's surrogate models: learn a teacher's outputs.
  config.distill.teacher = ''  # A classifier's train workdir; '' = ordinary training on labels.
  config.distill.temperature = 1.0  # LOMMA: T = 1.
  config.distill.data = ml_collections.ConfigDict(config.data.to_dict())  # The images to distil on (public);
  # config.data still gives the test split the student is measured on and the input size.

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 100  # 0: no training, init_file is used as it is (an imported model).
  config.train.aux_loss_weight = 1.0  # Auxiliary-head loss weight (Inception-v3 with aux_logits): PPA's 1.0.
  config.train.batch_size = 128  # Global batch, split over all devices and hosts.
  config.train.eval_every_epochs = 1  # Test-set evaluation and a checkpoint every this many epochs.
  config.train.log_every_steps = 50  # Progress line + train metrics.
  config.train.keep_checkpoints = 2  # Latest N kept, plus the best by test accuracy.
  config.train.diverged_loss = 1e3  # A train/test loss above this stops the run as diverged; 0 = NaN/inf only.
  config.train.resume_with_new_optim = False  # Relaunch in the same workdir with changed config.optim (a
  # diverged run's lower lr): continues from the latest checkpoint; recorded in run_history.json.
  return config


def demo_data(config: ml_collections.ConfigDict, split: str = 'private', dataset: str = 'mnist_demo'):
  """Bundled digits instead of FaceScrub: grey 32x32 images, no flips (they change digits)."""
  config.data.name = f'{dataset}/{split}'
  config.data.data_dir = 'data/tfds'
  config.data.image_size = 32
  config.data.augment.saturation = 0.0
  config.data.augment.hue = 0.0
  config.data.augment.hflip = False
  if 'model' in config:  # a classifier's head; the GAN config has no model section
    config.model.num_classes = 5


def demo_public_pretraining(config: ml_collections.ConfigDict, dataset: str = 'mnist_demo'):
  """TL-DMI's public data for a demo classifier: the other digits (5-9, as the demo's GAN), at its input size."""
  public = base_config()
  demo_data(public, split='public', dataset=dataset)
  config.transfer.public_data = public.data
  config.transfer.public_data.image_size = config.data.image_size
  config.transfer.public_num_classes = public.model.num_classes


def demo_model(config: ml_collections.ConfigDict):
  """A narrow ResNet-18 with the small stem: trains in seconds per epoch on 2 CPU cores."""
  config.model.width = 16
  config.model.stem = 'small'


def demo_schedule(config: ml_collections.ConfigDict, epochs: int):
  """Shorter run, milestones at the same fractions (75%, 90%) as the 100-epoch recipe."""
  config.train.epochs = epochs
  config.train.batch_size = 64
  config.train.log_every_steps = 10
  config.optim.lr_milestones = (round(0.75 * epochs), round(0.9 * epochs))
