"""Train the GAN of the low-resolution MI protocol: GMI's WGAN-GP (default) or KEDMI's (`kedmi`).

  python launch.py --config=configs/gan64.py --workdir=~/gans/celeba64_gmi --config.data.manual_dir=/data/celeba
  python launch.py --config=configs/gan64.py:kedmi --workdir=~/gans/celeba64_kedmi_vgg16 \\
      --config.data.manual_dir=/data/celeba --config.gan.target.workdir=~/targets/vgg16

The reference recipe (GMI `Celeba/train_gan.py`, KEDMI `k+1_gan.py`): 64x64 public images in [0, 1],
batch 64, Adam 2e-4 (0.5, 0.999), one generator step per 5 critic steps; GMI trains 280 epochs of the
public set, KEDMI 120. `steps` counts critic steps (a batch each: 280 epochs of 30,000 images are
131,250). The data: CelebA's public (GAN) list of the GMI split, the protocol's crop (docs/lowres.md).

Presets: `kedmi` (KEDMI's GAN for the target in config.gan.target.workdir), `demo` (MNIST-5k digits 5-9 at
32x32, a few minutes on CPU), `tiny` (16x16 sklearn digits, seconds: a smoke test), `steps=N`.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, kedmi=False, demo=False, tiny=False, steps=131250)
  config = ml_collections.ConfigDict()
  config.job = 'gan64'
  config.seed = 42
  config.num_devices = 0  # 0 = all devices; the batch is split over them.
  config.matmul_precision = common.MATMUL_PRECISION

  config.data = common.base_config().data
  config.data.name = 'celeba_gmi/public'
  config.data.image_size = 64

  config.gan = ml_collections.ConfigDict()
  config.gan.kind = 'kedmi' if arg.kedmi else 'wgan_gp'  # GMI: 'wgan_gp'; KEDMI: 'kedmi'
  config.gan.z_dim = 100
  config.gan.width = 64  # 512 channels at 4x4 in the generator
  config.gan.lr = 2e-4
  config.gan.betas = (0.5, 0.999)
  config.gan.n_critic = 5
  config.gan.gp_weight = 10.0  # wgan_gp
  config.gan.entropy_weight = 1e-4  # kedmi: summed over the batch, as KEDMI's HLoss
  config.gan.teacher_mode = 'train'  # kedmi: the target's BatchNorm as KEDMI's code leaves it ('eval': toolbox)
  config.gan.target = ml_collections.ConfigDict()  # kedmi: the classifier whose soft labels D learns
  config.gan.target.workdir = ''
  config.gan.target.checkpoint = 'best'

  config.train = ml_collections.ConfigDict()
  config.train.steps = arg.steps if not arg.kedmi or arg.steps != 131250 else 56250  # KEDMI: 120 epochs
  config.train.batch_size = 64
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.train.sample_every_steps = 2000
  config.train.keep_checkpoints = 2
  config.train.num_samples = 64

  if arg.demo or arg.tiny:
    common.demo_data(config, split='public', dataset='digits_demo' if arg.tiny else 'mnist_demo')
    config.gan.width = 16
    config.gan.z_dim = 32
    config.train.update(steps=2000 if arg.steps == 131250 else arg.steps, log_every_steps=50)
    config.train.update(checkpoint_every_steps=250, sample_every_steps=500)
    if arg.kedmi:  # three batches and the target's forward pass a step: about 6x slower than wgan_gp
      config.gan.target.workdir = 'workdir/baseline_demo'  # the demo target (configs/baseline.py:demo)
      config.train.steps = 3000 if arg.steps == 131250 else arg.steps
  if arg.tiny:
    config.data.image_size = 16
    config.gan.width = 8
    config.train.update(
        steps=10 if arg.steps == 131250 else arg.steps,
        batch_size=8,
        log_every_steps=2,
        checkpoint_every_steps=5,
        sample_every_steps=5,
        num_samples=16,
    )
  return config
