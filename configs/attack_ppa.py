"""PPA: invert a trained target with a StyleGAN2 prior (Struppek et al., ICML 2022; Plug-and-Play-Attacks configs/attacking/FaceScrub_FFHQ.yaml defaults).

  python launch.py --config=configs/attack_ppa.py --workdir=/ckpt/r101_attack \\
      --config.target.workdir=/ckpt/r101_full --config.generator.dir=~/generators/ffhq

Presets for PPA's other settings: `:celeba` (CelebA_FFHQ.yaml) and `:dogs` (Stanford_Dogs_AFHQ.yaml, with
the AFHQ-dog generator imported from NVIDIA's afhqdog.pkl).
The generator directory comes from configs/import_stylegan.py (NVIDIA's ffhq.pkl) or the gan job.
For a TTS target, name its stage2/ directory. A killed attack resumes after its last finished batch.

Demo (CPU, minutes): the demo target of configs/baseline.py:demo (train it first) and the committed
demo generator (MNIST digits 5-9) attack the private digits 0-4:

  python launch.py --config=configs/baseline.py:demo --workdir=workdir/baseline_demo
  python launch.py --config=configs/baseline.py:demo --workdir=workdir/eval_demo \
      --config.model.name=resnet34 --config.seed=7
  python launch.py --config=configs/attack_ppa.py:demo --workdir=workdir/attack_demo

The evaluation model (another architecture and seed on the same private data) labels the final
images: its top-1 accuracy on them is the attack accuracy (chance: 20%).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, celeba=False, dogs=False)
  config = ml_collections.ConfigDict()
  config.job = 'attack_ppa'
  config.seed = 42  # z pool (np.random.RandomState), crops, final selection.
  config.num_devices = 0  # 0 = all devices; latents are split over them.
  config.matmul_precision = common.MATMUL_PRECISION  # float32 convs/matmuls as on the paper's V100s.

  config.target = ml_collections.ConfigDict()
  config.target.workdir = ''  # Workdir of the train job (its checkpoints and config).
  config.target.checkpoint = 'latest'  # 'latest' (upstream PPA: the last epoch), 'best' (the RoLSS code) or a step.
  # MaxViT targets: rebuild as the RoLSS attack code does (from skip and mode only: its cfg falls back to the
  # default, so every residual is in place, whatever the target was trained with). The paper preset sets it.
  config.target.official_rebuild = False

  config.generator = ml_collections.ConfigDict()
  config.generator.dir = ''  # A generator directory (generator.json + variables/).

  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.workdir = ''  # Optional: a second classifier's train workdir; reports its attack accuracy.
  config.evaluation.checkpoint = 'latest'

  config.attack = ml_collections.ConfigDict()
  config.attack.classes = ()  # Classes to attack; () = all of the target's.
  config.attack.search_space_size = 2000
  config.attack.num_candidates = 200  # Latents optimised per class.
  config.attack.truncation_psi = 0.5
  config.attack.truncation_cutoff = 8
  config.attack.batch_size = 25  # Latents per device per batch.
  config.attack.steps = 50  # Adam steps per batch.
  config.attack.lr = 0.005
  config.attack.betas = (0.1, 0.1)
  config.attack.lr_milestones = ()  # Steps at which lr *= lr_gamma.
  config.attack.lr_gamma = 0.1
  config.attack.poincare_xi = 1e-4
  config.attack.center_crop = 800  # Of the generator image, before resizing to the target; 0 = none.
  config.attack.rrc_scale = (0.9, 1.0)  # Per-step RandomResizedCrop during optimisation.
  config.attack.rrc_ratio = (1.0, 1.0)
  config.attack.antialias = True  # Every resize antialiased (upstream PPA); the RoLSS code's were not (paper.py).
  config.attack.clip = False  # Clip images to [-1, 1] during optimisation (PPA: off).
  config.attack.remat = False  # Recompute the generator in the backward pass (less memory).
  config.attack.final_samples = 50  # Kept per class.
  config.attack.final_iterations = 100
  config.attack.final_rrc_scale = (0.5, 0.9)
  config.attack.final_rrc_ratio = (0.8, 1.2)

  if arg.celeba:  # PPA's configs/attacking/CelebA_FFHQ.yaml: a larger pool, more steps
    config.attack.update(search_space_size=5000, steps=70)
  if arg.dogs:  # PPA's Stanford_Dogs_AFHQ.yaml: AFHQ-dog 512 px (import afhqdog.pkl), the whole image, 100 steps
    config.attack.update(center_crop=0, rrc_scale=(0.75, 1.0), steps=100, lr=0.01)
  if arg.demo:
    config.target.workdir = 'workdir/baseline_demo'
    config.generator.dir = 'docs/gan_demo/generator'
    config.evaluation.workdir = 'workdir/eval_demo'
    config.attack.update(
        search_space_size=500,
        num_candidates=16,
        truncation_cutoff=4,
        batch_size=16,
        steps=50,
        center_crop=0,
        final_samples=8,
        final_iterations=20,
    )
  return config
