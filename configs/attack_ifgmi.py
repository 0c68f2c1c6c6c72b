"""IF-GMI: PPA, then the intermediate features of the StyleGAN2 synthesis network, block by block (Qiu et al.,
ECCV 2024; final-solution/IF-GMI configs/ffhq_facescrub/*.yaml and attacks/optimize.py).

  python launch.py --config=configs/attack_ifgmi.py --workdir=/ckpt/r101_ifgmi \\
      --config.target.workdir=/ckpt/r101_full --config.generator.dir=~/generators/ffhq

Every PPA field means what it means in configs/attack_ppa.py; the defaults are IF-GMI's FaceScrub/FFHQ
ones, where they differ from PPA's: 50 candidates from 2,000 latents, all 50 kept (no final selection),
5 latents a device per batch, and the stages below. Presets: `celeba` (IF-GMI's CelebA/FFHQ steps and
search space), `demo` (the digits demo: configs/attack_ppa.py says how to make its target and evaluation
model).
"""

from configs import attack_ppa, common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, celeba=False)
  config = attack_ppa.get_config('demo' if arg.demo else None)
  config.job = 'attack_ifgmi'
  a = config.attack
  del a['steps']  # per stage, below
  # Stage 0 optimises w as PPA does; stage s >= 1 the features entering synthesis block s (b4 is block 0),
  # with w. Adam restarts at every stage.
  a.stage_steps = (50, 10, 10, 10, 10, 10, 10, 10)
  # l1-ball radii of each stage's deviation from its starting value, per sample over every element
  # (feature_radius[0] is unused: stage 0 has no feature); <= 0 = unconstrained.
  a.w_radius = (1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 8000.0)
  a.feature_radius = (1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 8000.0)
  # The reference starts each stage's RGB accumulation at its first block, dropping the earlier blocks'
  # ToRGB outputs; True carries them into the stage as a fixed input (the unsplit generator's image).
  a.carry_skip_image = False
  a.store_size = 299  # Stored images: the crop resized to this (Inception/FID input); 0 = full resolution.
  a.num_candidates = 50
  a.final_samples = 50  # = num_candidates: every candidate is kept, as the reference's.
  a.batch_size = 5  # Per device (the reference: 5 per GPU).
  if arg.celeba:  # configs/ffhq_celeba/main-*.yaml
    a.stage_steps = (70, 25, 25, 25, 25)
    a.search_space_size = 5000
    a.batch_size = 4
  if arg.demo:  # the 32 px demo generator has 4 blocks: at most 4 stages
    a.stage_steps = (40, 10, 10, 10)
    a.w_radius = (1000.0, 2000.0, 3000.0, 4000.0)
    # The reference's allowance per element (2000 / 512x4x4, 3000 / 512x8x8, 4000 / 512x16x16) times the
    # demo's element counts (128x4x4, 128x8x8, 64x16x16).
    a.feature_radius = (0.0, 500.0, 750.0, 500.0)
    a.update(num_candidates=16, final_samples=16, batch_size=16, store_size=0)
  return config
