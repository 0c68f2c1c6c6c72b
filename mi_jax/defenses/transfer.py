"""TL-DMI's mechanism: the layers before a freeze point get no updates.

Ho et al., "Model Inversion Robustness: Can Transfer Learning Help?" (CVPR 2024).

The classifier is pretrained on public data, then only the layers from a freeze point on are fine-tuned on
the private data, so the private data shape fewer parameters (hosytuyen/TL-DMI: `requires_grad = False` for
every child up to `freeze_layers`, models/classify.py; config/celeba/training_classifiers/classify.json:
VGG16 from conv4_2 on, IR152 its last 4 of 50 units, FaceNet64 units 6-24). Frozen layers' BatchNorm
statistics keep updating, as `model.train()` over the whole model does in the official engine. The two
stages are the `tl_dmi` job (tl_dmi.py):

  stage 1  pretraining on `transfer.public_data` (`transfer.pretrain_epochs` epochs, every layer trained), in
           `<workdir>/stage1/`; with pretrain_epochs = 0 the public weights are `model.init_file` instead
           (ImageNet weights: the PPA protocol's targets start from them, and TL-DMI's VGG16 does too);
  stage 2  the private data, the head re-initialised (`model.init_reinit`), every top-level module before
           `transfer.finetune_from` frozen, in `<workdir>/stage2/` (the attacked model).

The freeze point is the first top-level module, in forward order, whose name starts with `finetune_from`
(ResNet 'layer4': its last stage; DenseNet 'denseblock4'); parameters at the top level itself (a learnable
SSF k) stay trainable. No freeze point is published for the PPA protocol's ResNets and DenseNets.
"""

import flax.linen as nn
import jax
import ml_collections
import optax

from mi_jax import config_checks, models


def default_config() -> ml_collections.ConfigDict:
  """config.transfer of every classifier config: off (no freeze point)."""
  config = ml_collections.ConfigDict()
  config.finetune_from = ''  # TL-DMI: first top-level module fine-tuned (e.g. 'layer4'); '' = every layer trains.
  config.pretrain_epochs = 0  # Stage 1 on public_data; 0 = the public weights are config.model.init_file.
  config.public_num_classes = 0  # Classes of public_data (stage 1's head).
  config.public_data = ml_collections.ConfigDict()  # Stage 1's data config (the defense's preset fills it).
  return config


def validate_section(config: ml_collections.ConfigDict):
  """config.transfer of a classifier config (trainer.validate_config: the freeze point applies to any training)."""
  t, check = config.transfer, config_checks.check_field
  if not t.finetune_from:
    return
  names = top_level_modules(models.build_model(config.model), config.data.image_size)
  check(
      any(n.startswith(t.finetune_from) for n in names[1:]),
      'transfer.finetune_from',
      t.finetune_from,
      f'expected the start of a top-level module name after the first, in forward order: {", ".join(names)}',
  )


def top_level_modules(model: nn.Module, image_size: int) -> list[str]:
  """The names of the model's top-level submodules in the order its forward pass first calls them."""
  names = [path[0] for path, _, _ in models.call_trace(model, image_size) if len(path) == 1]
  return list(dict.fromkeys(names))


def frozen_modules(model: nn.Module, image_size: int, finetune_from: str) -> tuple[str, ...]:
  """The top-level modules before the first whose name starts with `finetune_from`."""
  names = top_level_modules(model, image_size)
  first = next(i for i, n in enumerate(names) if n.startswith(finetune_from))
  return tuple(names[:first])


def freeze(tx: optax.GradientTransformation, frozen: tuple[str, ...]) -> optax.GradientTransformation:
  """`tx` for every parameter outside the `frozen` top-level modules; those get zero updates (and no optimizer
  state), as parameters with requires_grad = False."""
  label = lambda params: {
      name: jax.tree.map(lambda _: 'frozen' if name in frozen else 'trained', sub) for name, sub in params.items()
  }
  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, label)
