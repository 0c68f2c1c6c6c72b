"""Parity with NVIDIA's own StyleGAN2-ADA PyTorch code (opt-in: the code is not ours to ship).

  git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/sg2ada
  STYLEGAN2_ADA_PYTORCH=/tmp/sg2ada python -m pytest -q tests/test_stylegan_official.py
  # add STYLEGAN2_ADA_FFHQ=1 for the ffhq-1024 config (about a minute on CPU)

The official Generator is built with random weights (biases, noise strengths and
w_avg randomised too, so every path shows), pickled by the official persistence
code exactly as its training loop does, imported here without running any of it,
and compared with const noise in fp32 on CPU.
"""

import copy
import os
import pickle
import sys

import jax
import numpy as np
import pytest

OFFICIAL = os.environ.get('STYLEGAN2_ADA_PYTORCH', '')
pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(OFFICIAL, 'training')),
    reason='set STYLEGAN2_ADA_PYTORCH to a checkout of NVlabs/stylegan2-ada-pytorch',
)

SMALL = dict(
    z_dim=64,
    c_dim=0,
    w_dim=64,
    img_resolution=32,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=2048, channel_max=128, num_fp16_res=2, conv_clamp=256),
)
FFHQ = dict(
    z_dim=512,
    c_dim=0,
    w_dim=512,
    img_resolution=1024,
    img_channels=3,
    mapping_kwargs=dict(num_layers=8),
    synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None),
)


def official_generator_pickle(path, kwargs):
  torch = pytest.importorskip('torch')
  sys.path.insert(0, OFFICIAL)
  try:
    import dnnlib  # pylint: disable=g-import-not-at-top
    from training import networks as official  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(OFFICIAL)
  kwargs = dnnlib.EasyDict(copy.deepcopy(kwargs))
  kwargs.mapping_kwargs = dnnlib.EasyDict(kwargs.mapping_kwargs)
  kwargs.synthesis_kwargs = dnnlib.EasyDict(kwargs.synthesis_kwargs)
  torch.manual_seed(0)
  G = official.Generator(**kwargs).eval().requires_grad_(False)
  with torch.no_grad():
    for name, p in G.named_parameters():
      if name.endswith('noise_strength'):
        p.copy_(torch.randn(()) * 0.5)
      elif name.endswith('bias'):
        p.add_(torch.randn_like(p) * 0.2)
    G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
  with open(path, 'wb') as f:  # as training_loop.py writes snapshots
    pickle.dump(
        dict(
            G=copy.deepcopy(G),
            D=None,
            G_ema=copy.deepcopy(G),
            augment_pipe=None,
            training_set_kwargs=dnnlib.EasyDict(path='dataset.zip'),
        ),
        f,
    )
  return G


@pytest.mark.parametrize('name', ['small', 'ffhq1024'])
def test_matches_official_generator(tmp_path, name):
  if name == 'ffhq1024' and not os.environ.get('STYLEGAN2_ADA_FFHQ'):
    pytest.skip('set STYLEGAN2_ADA_FFHQ=1 for the 1024x1024 config')
  import torch  # pylint: disable=g-import-not-at-top
  from mi_jax.stylegan import checkpoint, networks, nvidia_pickle  # pylint: disable=g-import-not-at-top

  path = str(tmp_path / f'{name}.pkl')
  G_torch = official_generator_pickle(path, SMALL if name == 'small' else FFHQ)
  nvidia_pickle.import_pickle(path, str(tmp_path / 'generator'))
  config, variables, _ = checkpoint.load_generator(str(tmp_path / 'generator'))
  G = networks.Generator(config)

  z = np.random.default_rng(1).standard_normal((2 if name == 'small' else 1, config.z_dim))
  with torch.no_grad():
    ws_torch = G_torch.mapping(torch.tensor(z), None, truncation_psi=0.7, truncation_cutoff=3)
    img_torch = G_torch.synthesis(ws_torch, noise_mode='const', force_fp32=True).numpy().transpose(0, 2, 3, 1)
  ws = G.apply(variables, z.astype(np.float32), None, 0.7, 3, method=G.map)
  img = jax.jit(lambda v, w: G.apply(v, w, noise_mode='const', method=G.synthesize))(variables, ws_torch.numpy())
  assert float(np.abs(np.asarray(ws) - ws_torch.numpy()).max()) <= 1e-5
  assert float(np.abs(np.asarray(img) - img_torch).max()) <= 1e-4
