"""PLG-MI's GAN: pseudo-label the public set with the target, then train the conditional GAN on it.

  python launch.py --config=configs/plgmi_gan.py --workdir=~/gans/plgmi_celeba_vgg16 \\
      --config.data.manual_dir=/data/celeba --config.gan.target.workdir=~/targets/vgg16

The reference recipe (LetheSec/PLG-MI-Attack top_n_selection.py --top_n=30, train_cgan.py): the public
images at 64x64 in [0, 1] (CelebA's public (GAN) list of the GMI split with its 108 px crop, or FFHQ's
128 px thumbnails cropped to 88: `--config.data.name=ffhq --config.data.center_crop=88`); per class the
30 public images the target finds most probable; 30,000 iterations of one generator step then 5 critic
steps on batches of 64, Adam 2e-4 (0, 0.9), hinge loss, alpha 0.2 x the target's max-margin loss on one
augmented view of the fakes. `steps` counts iterations.

Presets: `demo` (MNIST-5k digits 5-9 at 32x32 for the demo target configs/baseline.py:demo, minutes on
CPU), `tiny` (16x16 sklearn digits for configs/baseline.py:tiny's target in workdir/baseline_tiny,
seconds: a smoke test), `steps=N`.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, steps=0)
  config = ml_collections.ConfigDict()
  config.job = 'plgmi_gan'
  config.seed = 42
  config.num_devices = 0  # 0 = all devices; the batch is split over them.
  config.matmul_precision = common.MATMUL_PRECISION

  config.data = common.base_config().data
  config.data.name = 'celeba_gmi/public'
  config.data.image_size = 64

  config.gan = ml_collections.ConfigDict()
  config.gan.top_n = 30  # public images per class (pseudo-labels)
  config.gan.z_dim = 128
  config.gan.width = 64  # the generator starts at 16 x width channels; the critic ends at 16 x width
  config.gan.lr = 2e-4
  config.gan.betas = (0.0, 0.9)
  config.gan.n_dis = 5  # critic steps per iteration (after its one generator step)
  config.gan.alpha = 0.2  # weight of the target's max-margin loss in the generator's
  config.gan.jitter_p = 0.5  # colour jitter's probability in that augmented view (kornia's default p)
  config.gan.target = ml_collections.ConfigDict()  # the classifier PLG-MI attacks: pseudo-labels and guidance
  config.gan.target.workdir = ''
  config.gan.target.checkpoint = 'best'

  config.train = ml_collections.ConfigDict()
  config.train.steps = arg.steps or 30000
  config.train.batch_size = 64
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.train.sample_every_steps = 1000
  config.train.keep_checkpoints = 2

  if arg.demo or arg.tiny:
    common.demo_data(config, split='public', dataset='digits_demo' if arg.tiny else 'mnist_demo')
    config.gan.target.workdir = 'workdir/baseline_demo'  # the demo target (configs/baseline.py:demo)
    config.gan.target.checkpoint = 'latest'  # as the attack demos attack it
    # ~2,500 public digits for 5 classes: 500 a class keeps the reference's one pair per public image.
    config.gan.top_n = 500
    config.gan.width = 16
    config.train.update(steps=arg.steps or 3000, log_every_steps=50, checkpoint_every_steps=250)
    config.train.sample_every_steps = 250
  if arg.tiny:
    config.data.image_size = 16
    config.gan.target.workdir = 'workdir/baseline_tiny'  # a 16 px target: configs/baseline.py:tiny
    config.gan.update(width=4, z_dim=16, top_n=20)
    config.train.update(
        steps=arg.steps or 4, batch_size=8, log_every_steps=2, checkpoint_every_steps=2, sample_every_steps=2
    )
  return config
