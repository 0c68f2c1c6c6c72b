"""The paper's study (ECCV 2024, Table 1): architectures x defenses, PPA, every metric.

On a cluster, with FaceScrub, the FFHQ StyleGAN2-ADA generator (configs/import_stylegan.py),
torchvision's ImageNet files for the ResNets and Inception-v3, and the FaceNet and FID weights:

  python launch.py --config=configs/paper.py --workdir=/ckpt/paper \\
      --config.classifier.data.manual_dir=/data/facescrub \\
      --config.attack.generator_dir=/ckpt/generators/ffhq \\
      --config.study.init_files.resnet34=~/weights/resnet34-b627a593.pth  (... one per ResNet) \\
      --config.evaluation_model.model.init_file=~/weights/inception_v3_google-0cc3c7bd.pth \\
      --config.metrics.facenet_file=~/weights/20180402-114759-vggface2.pt \\
      --config.metrics.fid_inception_file=~/weights/pt_inception-2015-12-05-6726825d.pth

Demo, the same matrix for a narrow ResNet-18 and DenseNet-121 on the bundled MNIST digits
(private 0-4) with the committed demo generator (public 5-9), on CPU (measured: 21-24 minutes
on 2 cores):

  python launch.py --config=configs/paper.py:demo --workdir=workdir/paper_demo

The job trains what is missing, attacks, evaluates, and writes results.md/.csv/.json and
figures/ into the workdir; relaunching skips finished work and resumes the rest.
"""

import ml_collections

from configs import attack_ppa, common, eval_model, evaluate

PAPER_ARCHITECTURES = ('resnet34', 'resnet50', 'resnet101', 'resnet152', 'densenet121')
DEMO_IMAGE_SIZE = 16
DEFENSES = ('none', 'rolss', 'ssf', 'tts', 'bido', 'rolss_bido')


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, epochs=3)
  config = ml_collections.ConfigDict()
  config.job = 'reproduce'
  config.seed = 42
  config.num_devices = 0

  config.study = ml_collections.ConfigDict()
  config.study.architectures = PAPER_ARCHITECTURES
  config.study.defenses = DEFENSES
  config.study.init_files = ml_collections.ConfigDict({a: '' for a in PAPER_ARCHITECTURES})  # ImageNet .pth per arch
  config.study.tts_stage1_fraction = 0.05      # TTS: M = 5 of 100 epochs with skips

  # Shared by every target: data, model size (num_classes, width, stem, dtype), optimiser, schedule and the
  # BiDO weights of the BiDO rows. Its job, seed, model.name, skip and init_file are set per cell.
  config.classifier = common.base_config()
  config.classifier.bido.a1, config.classifier.bido.a2 = 0.05, 0.5

  config.evaluation_model = eval_model.get_config()

  ppa = attack_ppa.get_config()
  config.attack = ml_collections.ConfigDict()
  config.attack.generator_dir = ''             # A generator directory (import_stylegan or the gan job).
  config.attack.settings = ppa.attack          # The RoLSS repo's per-architecture PPA settings:
  config.attack.settings.num_candidates = 16
  config.attack.settings.final_samples = 8
  config.attack.settings.batch_size = 8
  config.attack.settings.lr_milestones = (30, 40)

  config.metrics = evaluate.metrics_section()  # cache_dir '' = <workdir>/cache

  config.analysis = ml_collections.ConfigDict()
  config.analysis.repvgg = 'repvgg_a0'         # RepVGG equivalence figure ('' = skip).
  config.analysis.repvgg_width = 0

  if arg.demo:
    config.study.architectures = ('resnet18', 'densenet121')
    config.study.init_files = ml_collections.ConfigDict({a: '' for a in config.study.architectures})
    # 16px digits keep 12 targets and 12 attacks within the 2-core budget (DenseNet-121 trains ~4x slower
    # at 32px); the 32px demo generator's images are resized to 16 for the targets, as PPA resizes.
    common.demo_data(config.classifier)
    common.demo_schedule(config.classifier, arg.epochs)
    config.classifier.data.image_size = DEMO_IMAGE_SIZE
    config.classifier.model.width = 8
    config.classifier.model.stem = 'small'
    config.evaluation_model = eval_model.get_config(f'demo,epochs={max(arg.epochs, 4)}')
    config.evaluation_model.data.image_size = DEMO_IMAGE_SIZE
    config.attack.generator_dir = 'docs/gan_demo/generator'
    config.attack.settings.update(search_space_size=300, num_candidates=8, truncation_cutoff=4, batch_size=40,
                                  steps=25, lr_milestones=(), center_crop=0, final_samples=6, final_iterations=10,
                                  eval_sizes=(DEMO_IMAGE_SIZE,))
    config.metrics.batch_size = 128
    config.analysis.repvgg_width = 8
  return config
