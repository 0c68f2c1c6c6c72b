"""Train the demo image prior: a small StyleGAN2 on the public demo split.

The attack demo inverts targets trained on MNIST-5k digits 0-4 (private) with a
generator that has only seen digits 5-9 (public), the GMI MNIST protocol.
4000 steps of 32 (128 kimg); on 2 CPU cores about 35 minutes (43 measured while other jobs
shared the CPU):

  python launch.py --config=configs/gan_demo.py --workdir=workdir/gan_demo

The committed generator in docs/gan_demo/generator was made by exactly this
command (seed 42); `<workdir>/generator/` is the G_ema it writes at the end, and
`<workdir>/samples/` holds a grid of fixed latents every `sample_every_steps`.

Presets: `steps=N` (shorter or longer runs), `tiny` (16x16 sklearn digits, a
few seconds: a smoke test of the job, not a usable prior).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, tiny=False, steps=4000)
  config = ml_collections.ConfigDict()
  config.job = 'gan'
  config.seed = 42
  config.num_devices = 0  # 0 = all devices; the batch is split over them.
  config.matmul_precision = common.MATMUL_PRECISION

  config.data = common.base_config().data
  common.demo_data(config, split='public')  # MNIST-5k digits 5-9, 32x32 grey, [-1, 1]

  config.generator = ml_collections.ConfigDict()
  config.generator.z_dim = 64
  config.generator.w_dim = 64
  config.generator.mapping_layers = 2  # StyleGAN2-ADA 'auto'/'cifar' use 2; FFHQ uses 8.
  config.generator.mapping_lr_multiplier = 0.01
  config.generator.w_avg_beta = 0.995
  config.generator.channel_base = 1024  # channels at resolution r: min(channel_base // r, channel_max)
  config.generator.channel_max = 128  # -> 128 @ 4, 8; 64 @ 16; 32 @ 32
  config.generator.conv_clamp = 0.0  # 0 = off (StyleGAN2-ADA runs use 256 with fp16)

  config.discriminator = ml_collections.ConfigDict()
  config.discriminator.channel_base = 1024
  config.discriminator.channel_max = 128
  config.discriminator.mbstd_group_size = 4

  config.gan = ml_collections.ConfigDict()  # StyleGAN2-ADA's recipe, without ADA and path-length reg.
  config.gan.g_lr = 0.0025
  config.gan.d_lr = 0.0025
  config.gan.betas = (0.0, 0.99)
  config.gan.r1_gamma = 0.05  # ADA 'cifar' uses 0.01; low-resolution data wants a small gamma.
  config.gan.r1_interval = 16
  config.gan.style_mixing = 0.9
  config.gan.ema_kimg = 10.0
  config.gan.ema_rampup = 0.05  # 0 = no ramp-up

  config.train = ml_collections.ConfigDict()
  config.train.steps = arg.steps
  config.train.batch_size = 32
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 250
  config.train.sample_every_steps = 500
  config.train.keep_checkpoints = 2
  config.train.num_samples = 64

  if arg.tiny:
    common.demo_data(config, split='public', dataset='digits_demo')
    config.data.image_size = 16
    config.generator.update(z_dim=16, w_dim=16, channel_base=128, channel_max=16)
    config.discriminator.update(channel_base=128, channel_max=16)
    config.train.update(batch_size=8, log_every_steps=2, checkpoint_every_steps=2, sample_every_steps=4, num_samples=16)
  return config
