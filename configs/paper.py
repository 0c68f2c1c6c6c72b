"""The paper's study (ECCV 2024, Table 1): architectures x defenses, PPA, every metric.

On a cluster, with FaceScrub, the FFHQ StyleGAN2-ADA generator (configs/import_stylegan.py),
torchvision's ImageNet files for the ResNets, PPA's released evaluation model and the FaceNet and
FID weights:

  python launch.py --config=configs/paper.py --workdir=/ckpt/paper \\
      --config.classifier.data.manual_dir=/data/facescrub \\
      --config.attacks.ppa.generator.dir=/ckpt/generators/ffhq \\
      --config.study.per_architecture.resnet34.init_file=~/weights/resnet34-b627a593.pth  (... each ResNet) \\
      --config.evaluation_model.model.init_file=~/weights/inception_v3_facescrub.pt \\
      --config.metrics.facenet_file=~/weights/20180402-114759-vggface2.pt \\
      --config.metrics.fid_inception_file=~/weights/pt_inception-2015-12-05-6726825d.pth

Every default is the protocol the paper ran (the RoLSS code, Pillowkoh/RoLSS, a fork of PPA); each
place where that differs from upstream PPA or from a clean implementation is a named field here,
listed in the README's protocol table. A field the protocol needs and the user left empty (an
ImageNet file, the evaluation model's file) stops the study before any work, naming the field;
`study.from_scratch=True` trains without them instead.

Other private data sets: `:dataset=celeba` (CelebA-1000) and `:dataset=dogs` (Stanford Dogs with the
AFHQ-dog generator); see private_dataset.

More attacks per cell: `:attacks=ppa+ifgmi+plgmi` (IF-GMI on the same generator; PLG-MI trains its
conditional GAN for each cell's target first: name its public data in attacks.plgmi.generator_job.data).

Demo, the same matrix plus MID and NegLS rows for a narrow ResNet-18 and DenseNet-121 on the bundled
MNIST digits (private 0-4) with the committed demo generator (public 5-9), on CPU (about 20 minutes on
2 cores):

  python launch.py --config=configs/paper.py:demo --workdir=workdir/paper_demo

On a cluster, one task per cell (scripts/slurm/study.sh): `--config.study.tasks=list` prints the tasks;
`evaluation`, then an sbatch array with `slurm`, then `gather` builds the table.

Other defenses as rows (README's defense table; several joined with '+'):
`--config.study.defenses="('none','mid','negls','tl_dmi','trap_mid','midre','rolss+negls')"`.

The paper's ablations, each a figure against the swept value (`:sweeps=stage_removal`, `ssf_k`,
`tts_switch`, or several joined with '+'; with `demo` for the digits):

  python launch.py --config=configs/paper.py:demo,sweeps=ssf_k --workdir=workdir/sweep_ssf_k

A study whose differences can be told from noise, on CPU (`:cpu`, about 2 hours on 2 cores; see
cpu_study): the same matrix with 3 seeds per cell and 100 final images per row and seed.

The job trains what is missing, attacks, evaluates, and writes results.md/.csv/.json and
figures/ into the workdir; relaunching skips finished work and resumes the rest.
"""

import ml_collections

from configs import attack_ifgmi, attack_plgmi, attack_ppa, common, eval_model, evaluate, plgmi_gan
from mi_jax import models

PAPER_ARCHITECTURES = ('resnet34', 'resnet50', 'resnet101', 'resnet152', 'densenet121')
DEMO_IMAGE_SIZE = 16
DEFENSES = ('none', 'rolss', 'ssf', 'tts', 'bido', 'rolss_bido')
# The demo's matrix: the paper's rows and two of the defenses MI studies compare against (mi_jax/defenses).
DEMO_DEFENSES = DEFENSES + ('mid', 'negls')

# The RoLSS code's per-architecture training recipe (configs/training/targets/FaceScrub/<arch>/full.yaml):
# ImageNet initialisation and batch 128 for ResNets, MobileNetV2 and ConvNeXt; DenseNets from scratch with
# batch 64 (the ImageNet weights do not fit truncated dense blocks); MaxViT and ViT from ImageNet with batch 64.
# RepVGG and EfficientNet have no recipe there.
FAMILY_RECIPES = {
    'resnet': dict(init='imagenet', batch_size=128),
    'densenet': dict(init='scratch', batch_size=64),
    'mobilenet': dict(init='imagenet', batch_size=128),
    'convnext': dict(init='imagenet', batch_size=128),
    'repvgg': dict(init='scratch', batch_size=128),
    'maxvit': dict(init='imagenet', batch_size=64),
    'vit': dict(init='imagenet', batch_size=64),
    'efficientnet': dict(init='imagenet', batch_size=128),  # not in the RoLSS code: MobileNetV2's recipe
}


def per_architecture_table() -> ml_collections.ConfigDict:
  """study.per_architecture: for every target model, how it starts and its batch size (a small table).

  init: 'imagenet' (needs init_file unless study.from_scratch) or 'scratch';
  init_file: the torchvision ImageNet .pth; batch_size: the global training batch.
  """
  table = ml_collections.ConfigDict()
  for name in models.model_names():
    family = models.family_of(name).name
    if family in FAMILY_RECIPES:  # not the evaluation model (inception_v3): config.evaluation_model
      table[name] = ml_collections.ConfigDict(dict(init_file='', **FAMILY_RECIPES[family]))
  return table


DATASETS = ('facescrub', 'celeba', 'dogs')


def private_dataset(config: ml_collections.ConfigDict, dataset: str):
  """The study on PPA's other private data sets (`:dataset=celeba` or `:dataset=dogs`).

  celeba: CelebA-1000 (PPA's 224 px HD crops, on which its test-time Resize(224) + CenterCrop(224) is the
  identity; for img_align_celeba set data.center_crop=178), the evaluation model's CelebA recipe
  (milestones [75, 90]; PPA's released CelebA Inception-v3 for 'import') and PPA's CelebA_FFHQ attack.
  dogs: Stanford Dogs, targets on the whole images, the evaluation model on the annotated boxes
  (stanford_dogs/cropped), DenseNets with batch 128 (the RoLSS code), PPA's Stanford_Dogs_AFHQ attack
  on the AFHQ-dog generator (name it in attacks.ppa.generator.dir).
  """
  if dataset not in DATASETS:
    raise ValueError(f'preset dataset={dataset!r}: expected one of {DATASETS}')
  data, num_classes, attack = {
      'celeba': ('celeba1000', 1000, 'celeba'),
      'dogs': ('stanford_dogs/uncropped', 120, 'dogs'),
  }[dataset]
  config.classifier.data.name = data
  config.classifier.model.num_classes = config.evaluation_model.model.num_classes = num_classes
  if dataset == 'celeba':
    config.evaluation_model.optim.lr_milestones = eval_model.get_config('celeba').optim.lr_milestones
  else:
    config.study.evaluation_data = 'stanford_dogs/cropped'
    for name, row in config.study.per_architecture.items():
      if models.family_of(name).name == 'densenet':
        row.batch_size = 128
  settings = attack_ppa.get_config(attack).attack
  config.attacks.ppa.attack.update(
      {k: settings[k] for k in ('search_space_size', 'steps', 'center_crop', 'rrc_scale', 'lr')}
  )


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, cpu=False, epochs=3, attacks='ppa', sweeps='', dataset='facescrub')
  if arg.cpu:  # the demo's data and generator at a scale whose differences can be told from noise
    arg.demo = True
    arg.epochs = max(arg.epochs, CPU_EPOCHS)
  config = ml_collections.ConfigDict()
  config.job = 'reproduce'
  config.seed = 42
  config.num_devices = 0
  config.matmul_precision = common.MATMUL_PRECISION  # every job of the study runs with it

  config.study = ml_collections.ConfigDict()
  config.study.architectures = PAPER_ARCHITECTURES
  config.study.defenses = DEFENSES
  config.study.per_architecture = per_architecture_table()
  config.study.from_scratch = False  # True: ImageNet-initialised models start from random weights
  config.study.tts_stage1_fraction = 0.05  # TTS: M = 5 of 100 epochs with skips
  # Attacked and reported: 'best' on test (RoLSS code), 'latest' (PPA), or 'matched': per cell the checkpoint whose
  # test accuracy is closest to match_accuracy (the paper compares some defenses at matched natural accuracy).
  config.study.checkpoint = 'best'
  config.study.match_accuracy = 0.0
  config.study.seeds = ()  # Training (and attack) seeds of every cell; () = (config.seed,). Several: CIs across them.
  # The paper's ablations, as more cells per architecture, each plotted against its value: 'stage_removal' (each
  # stage's skips removed alone), 'ssf_k' (k of sweep_ssf_k), 'tts_switch' (M = each share of the epochs).
  config.study.sweeps = tuple(filter(None, arg.sweeps.split('+')))
  config.study.sweep_ssf_k = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
  config.study.sweep_tts_stage1_fractions = (0.01, 0.05, 0.1, 0.25, 0.5)
  if config.study.sweeps:  # a sweep's reference row; the rest of the matrix is its own study
    config.study.defenses = ('none',)
  # 'import': the evaluation model is the file evaluation_model.model.init_file used as it is (PPA's released
  # inception_v3_facescrub.pt, as the RoLSS code attacks with); 'train': trained here by PPA's recipe.
  config.study.evaluation_model = 'import'
  config.study.evaluation_data = ''  # The evaluation model's data set (its name); '' = the targets'.
  # What this process runs: 'all' (everything, then the table), or fanned out over a cluster (scripts/slurm/):
  # 'evaluation' (the evaluation model, first), a task index 'i' or slice 'i:j', 'slurm' (SLURM array task i of n
  # runs tasks i, i+n, ...), then 'gather' (the table from the finished tasks). 'list' prints the tasks.
  config.study.tasks = 'all'

  # Shared by every target: data, model size (num_classes, width, stem, dtype), optimiser, schedule and the
  # BiDO weights of the BiDO rows. Its job, seed, model.name, skip, init_file and batch size are set per cell.
  config.classifier = common.base_config()
  config.classifier.bido.a1, config.classifier.bido.a2 = 0.05, 0.5

  config.evaluation_model = eval_model.get_config()

  config.study.attacks = ('ppa',)  # Run on every target; each has its job config in config.attacks.
  config.attacks = ml_collections.ConfigDict()
  config.attacks.ppa = attack_ppa.get_config()  # its target is set per cell; name the generator directory
  settings = config.attacks.ppa.attack  # The RoLSS repo's per-architecture PPA settings
  settings.num_candidates = 16  # (configs/attacking/FaceScrub/<arch>/full.yaml):
  settings.final_samples = 8
  settings.batch_size = 8
  settings.lr_milestones = (30, 40)
  settings.antialias = False  # Its torchvision resized tensors without antialiasing.
  config.attacks.ppa.target.official_rebuild = True  # MaxViT attacked as its attack code rebuilt it (README)

  config.metrics = evaluate.metrics_section()  # cache_dir '' = <workdir>/cache
  config.metrics.fid_quirk = True  # PPA's FID inputs ([-3, 1]), so FIDs compare with the paper's
  config.metrics.antialias = False  # As the attack's resizes.

  # More attacks per cell (preset `attacks=ppa+ifgmi+plgmi`): IF-GMI on PPA's generator; PLG-MI with its
  # conditional GAN trained per cell for that cell's target (generator_job; its public data: name it).
  config.study.attacks = tuple(arg.attacks.split('+'))
  if 'ifgmi' in config.study.attacks:
    config.attacks.ifgmi = attack_ifgmi.get_config()
  if 'plgmi' in config.study.attacks:
    config.attacks.plgmi = attack_plgmi.get_config()
    config.attacks.plgmi.generator_job = plgmi_gan.get_config()

  if arg.dataset != 'facescrub':
    private_dataset(config, arg.dataset)

  config.analysis = ml_collections.ConfigDict()
  config.analysis.repvgg = 'repvgg_a0'  # RepVGG equivalence figure ('' = skip).
  config.analysis.repvgg_width = 0

  if arg.demo:
    config.study.architectures = ('resnet18', 'densenet121')
    if not config.study.sweeps:
      config.study.defenses = DEMO_DEFENSES
    config.study.from_scratch = True  # no ImageNet files for 16px digits
    config.study.evaluation_model = 'train'
    # 16px digits keep 12 targets and 12 attacks within the 2-core budget (DenseNet-121 trains ~4x slower
    # at 32px); the 32px demo generator's images are resized to 16 for the targets, as PPA resizes.
    common.demo_data(config.classifier)
    common.demo_schedule(config.classifier, arg.epochs)
    config.classifier.data.image_size = DEMO_IMAGE_SIZE
    common.demo_public_pretraining(config.classifier)  # TL-DMI rows (--config.study.defenses=...,tl_dmi)
    config.classifier.model.width = 8
    config.classifier.model.stem = 'small'
    for name in config.study.architectures:  # one batch size: DenseNet at 32 would not fit the time budget
      config.study.per_architecture[name].batch_size = config.classifier.train.batch_size
    config.evaluation_model = eval_model.get_config(f'demo,epochs={max(arg.epochs, 4)}')
    config.evaluation_model.data.image_size = DEMO_IMAGE_SIZE
    config.attacks.ppa.generator.dir = 'docs/gan_demo/generator'
    config.attacks.ppa.attack.update(
        search_space_size=300,
        num_candidates=8,
        truncation_cutoff=4,
        batch_size=40,
        steps=25,
        lr_milestones=(),
        center_crop=0,
        final_samples=6,
        final_iterations=10,
    )
    if 'ifgmi' in config.study.attacks:  # its demo settings, on the same generator
      config.attacks.ifgmi.generator.dir = config.attacks.ppa.generator.dir
      config.attacks.ifgmi.attack.update(attack_ifgmi.get_config('demo').attack.to_dict())
    if 'plgmi' in config.study.attacks:  # a GAN of the public digits at the targets' 16 px per cell
      config.attacks.plgmi.attack.update(attack_plgmi.get_config('demo').attack.to_dict())
      config.attacks.plgmi.attack.update(restarts=8, keep=8, steps=100)
      config.attacks.plgmi.generator_job = plgmi_gan.get_config('demo,steps=500')
      config.attacks.plgmi.generator_job.data.image_size = DEMO_IMAGE_SIZE
      config.attacks.plgmi.generator_job.gan.width = 8
    config.metrics.batch_size = 128
    config.analysis.repvgg_width = 8
  if arg.cpu:
    cpu_study(config)
  return config


CPU_EPOCHS = 5


def cpu_study(config: ml_collections.ConfigDict):
  """`:cpu`: the matrix for ResNet-18 and DenseNet-121 on the bundled digits with power to show effects
  (about 2 hours on 2 cores): width 16 (DenseNet growth 8; at width 8 its last dense block without skips,
  a plain chain of 16 layers 4 channels wide, stayed at chance), 5 epochs at lr 3e-3 (at 1e-3 that chain
  still did not learn in 5 epochs: 26% against 62%), 3 training seeds per cell, and 20 final images per
  class, 100 per row and seed (all 20 optimised candidates kept: the rows differ by the target alone)."""
  config.study.seeds = (1, 2, 3)
  if not config.study.sweeps:
    config.study.defenses = DEFENSES  # the paper's matrix, as committed in docs/paper_cpu/
  config.classifier.model.width = 16
  config.classifier.optim.lr = 3e-3
  config.evaluation_model.train.epochs = CPU_EPOCHS
  config.attacks.ppa.attack.update(num_candidates=20, final_samples=20, batch_size=50, final_iterations=10)
  config.analysis.repvgg = ''
