"""torch definitions of GMI's and KEDMI's GANs, laid out as the reference repositories lay them out (the module
names give the published state-dict keys): the independent side of the parity tests (tests/test_gan64.py) and of
the JAX-vs-torch attack benchmark (bench/attack_gan64.py). Written from the reference code's structure.
"""

import torch
from torch import nn as tnn


def _up(i, o):
  return tnn.Sequential(
      tnn.ConvTranspose2d(i, o, 5, 2, padding=2, output_padding=1, bias=False), tnn.BatchNorm2d(o), tnn.ReLU()
  )


class TorchGenerator(tnn.Module):

  def __init__(self, z_dim=100, dim=64, channels=3, stages=4):
    super().__init__()
    self.base = dim * 2 ** (stages - 1)
    self.l1 = tnn.Sequential(tnn.Linear(z_dim, self.base * 16, bias=False), tnn.BatchNorm1d(self.base * 16), tnn.ReLU())
    ups = [_up(self.base // 2**i, self.base // 2 ** (i + 1)) for i in range(stages - 1)]
    last = tnn.ConvTranspose2d(dim, channels, 5, 2, padding=2, output_padding=1)
    self.l2_5 = tnn.Sequential(*ups, last, tnn.Sigmoid())

  def forward(self, z):
    return self.l2_5(self.l1(z).view(z.shape[0], -1, 4, 4))


def _conv_in_lrelu(i, o, k=5, s=2, p=2):
  return tnn.Sequential(tnn.Conv2d(i, o, k, s, p), tnn.InstanceNorm2d(o, affine=True), tnn.LeakyReLU(0.2))


class TorchWGANCritic(tnn.Module):

  def __init__(self, channels=3, dim=64, stages=4):
    super().__init__()
    blocks = [_conv_in_lrelu(dim * 2 ** (i - 1), dim * 2**i) for i in range(1, stages)]
    self.ls = tnn.Sequential(
        tnn.Conv2d(channels, dim, 5, 2, 2), tnn.LeakyReLU(0.2), *blocks, tnn.Conv2d(dim * 2 ** (stages - 1), 1, 4)
    )

  def forward(self, x):
    return self.ls(x).view(-1)


class TorchMinibatchCritic(tnn.Module):

  def __init__(self, channels=3, dim=64, classes=1000, kernels=64, kernel_dim=50):
    super().__init__()
    self.layer1 = _conv_in_lrelu(channels, dim)
    self.layer2 = _conv_in_lrelu(dim, dim * 2)
    self.layer3 = _conv_in_lrelu(dim * 2, dim * 4)
    self.layer4 = _conv_in_lrelu(dim * 4, dim * 4, 3, 2, 1)
    features = dim * 4 * 16
    self.kernels, self.kernel_dim = kernels, kernel_dim
    self.mbd1 = tnn.Module()
    self.mbd1.T = tnn.Parameter(torch.randn(features, kernels, kernel_dim))
    self.fc_layer = tnn.Linear(features + kernels, classes)

  def forward(self, x):
    feat = self.layer4(self.layer3(self.layer2(self.layer1(x)))).view(x.shape[0], -1)
    M = (feat @ self.mbd1.T.view(feat.shape[1], -1)).view(-1, self.kernels, self.kernel_dim)
    l1 = (M.unsqueeze(0) - M.unsqueeze(1)).abs().sum(3)  # [N, N, B]
    closeness = torch.exp(-l1).sum(0) - 1
    return feat, self.fc_layer(torch.cat([feat, closeness], 1))
