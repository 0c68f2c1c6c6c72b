"""torch definitions of the low-resolution protocol's classifiers as the reference repositories lay them out
(GMI/KEDMI `classify.py`, `evolve.py`; module names give the published state-dict keys): the independent
side of tests/test_evolve.py. Written from the reference code's structure."""

import torch
from torch import nn

from mi_jax.convert import torch_compat


class VGG16(nn.Module):

  def __init__(self, n_classes):
    super().__init__()
    self.feature = torch_compat.import_torchvision().models.vgg16_bn().features
    self.bn = nn.BatchNorm1d(2048)
    self.bn.bias.requires_grad_(False)
    self.fc_layer = nn.Linear(2048, n_classes)

  def forward(self, x):
    feature = self.bn(self.feature(x).view(x.shape[0], -1))
    return feature, self.fc_layer(feature)


class Unit(nn.Module):  # bottleneck_IR

  def __init__(self, in_channel, depth, stride):
    super().__init__()
    if in_channel == depth:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
    self.res_layer = nn.Sequential(
        nn.BatchNorm2d(in_channel),
        nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
        nn.PReLU(depth),
        nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
        nn.BatchNorm2d(depth),
    )

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


def output_layer(spatial):
  return nn.Sequential(
      nn.BatchNorm2d(512), nn.Dropout(), nn.Flatten(), nn.Linear(512 * spatial * spatial, 512), nn.BatchNorm1d(512)
  )


class Backbone(nn.Module):

  def __init__(self, units, size):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
    body, in_channel = [], 64
    for count, depth in zip(units, (64, 128, 256, 512)):
      body += [Unit(in_channel, depth, 2)] + [Unit(depth, depth, 1) for _ in range(count - 1)]
      in_channel = depth
    self.body = nn.Sequential(*body)
    if size == 112:
      self.output_layer = output_layer(7)

  def forward(self, x):
    x = self.body(self.input_layer(x))
    return self.output_layer(x) if hasattr(self, 'output_layer') else x


class IRClassifier(nn.Module):  # IR152 / FaceNet64 (64 px) and FaceNet (112 px)

  def __init__(self, units, size, n_classes):
    super().__init__()
    self.feature = Backbone(units, size)
    if size == 64:
      self.output_layer = output_layer(4)
    self.fc_layer = nn.Linear(512, n_classes)

  def forward(self, x):
    feature = self.feature(x)
    if hasattr(self, 'output_layer'):
      feature = self.output_layer(feature)
    return feature, self.fc_layer(feature)
