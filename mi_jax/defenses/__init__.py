"""Defenses: what each row of the study changes in a classifier config, and their machinery.

  defend(config, 'rolss') -> the classifier config trained with that defense (a copy)

RoLSS and SSF are skip settings of the model (mi_jax.models); TTS is a second job over two
configs (tts.py, with the param-tree transplant of transplant.py); BiDO a loss term (bido.py).
The configs/*.py files and the study (mi_jax/reproduce.py) both build their cells here. Adding a
defense is one entry in DEFENSES (and its mechanism, if it needs a new one).
"""

import dataclasses

import ml_collections

from mi_jax import models

# BiDO's CelebA weights (Peng et al., Defend_MI); the RoLSS paper does not say which it used.
BIDO_WEIGHTS = (0.05, 0.5)
# SSF's k in the paper's rows (the RoLSS code's scripts/attack.sh): additive skips, concatenative skips.
SSF_K = {False: 0.2, True: 0.01}
# TTS: M = 5 of 100 epochs with every skip, then N = 95 without the last stage's.
TTS_STAGE1_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class Defense:
  label: str  # the row's name in tables
  last_stage: str = 'keep'  # the last stage's skips: 'keep', 'remove' (RoLSS) or 'scale' (SSF)
  two_stage: bool = False  # TTS: trained with every skip first, then transplanted
  bido: bool = False  # the BiDO-HSIC loss term


DEFENSES = {
    'none': Defense('No defense'),
    'rolss': Defense('RoLSS', last_stage='remove'),
    'ssf': Defense('SSF', last_stage='scale'),
    'tts': Defense('TTS', last_stage='remove', two_stage=True),
    'bido': Defense('BiDO', bido=True),
    'rolss_bido': Defense('RoLSS+BiDO', last_stage='remove', bido=True),
}


# MaxViT: the layers a defended stage's factor acts on where config.model.maxvit_layers names none (its
# official default: the factor acts nowhere, so RoLSS would be a no-op): every residual of the stage.
MAXVIT_DEFENDED_LAYERS = 'mbconv+window+grid'


def set_skip(config: ml_collections.ConfigDict, skip: tuple):
  """config.model.skip = skip; for MaxViT each stage it changes also gets MAXVIT_DEFENDED_LAYERS unless
  config.model.maxvit_layers already names that stage's layers."""
  config.model.skip = tuple(skip)
  if models.family_of(config.model.name).name == 'maxvit':
    layers = list(config.model.maxvit_layers)
    config.model.maxvit_layers = tuple(
        MAXVIT_DEFENDED_LAYERS if setting != 1 and layer == 'none' else layer for setting, layer in zip(skip, layers)
    )


def tts_stage1_epochs(fraction: float, epochs: int) -> int:
  """TTS's M: that share of the epochs, at least 1."""
  return max(1, round(fraction * epochs))


def ssf_k(model_name: str) -> float:
  """The paper's k for the model's family: 0.2 for additive skips, 0.01 for concatenative ones."""
  return SSF_K[models.family_of(model_name).concatenative_skips]


def defend(
    config: ml_collections.ConfigDict,
    defense: str,
    k: float | None = None,
    learn: bool = False,
    tts_stage1_fraction: float = TTS_STAGE1_FRACTION,
) -> ml_collections.ConfigDict:
  """A copy of the classifier `config` (its model.name set) trained with `defense`.

  `k`: SSF's factor (default: ssf_k); `learn`: SSF's k learnt from k. BiDO rows keep the weights
  config.bido already has (a study's), or get BIDO_WEIGHTS; every other row has BiDO off.
  """
  if defense not in DEFENSES:
    raise ValueError(f'defense {defense!r}: expected one of {sorted(DEFENSES)}')
  spec = DEFENSES[defense]
  config = ml_collections.ConfigDict(config.to_dict())
  name = config.model.name
  concatenative = models.family_of(name).concatenative_skips
  # The last stage that has skips (MobileNetV2's and EfficientNet's last stage has none).
  last = max(i for i, has in enumerate(models.residual_stages(config.model)) if has)
  stages = models.num_skip_stages(name)
  with_last = lambda setting: tuple(setting if i == last else 1.0 for i in range(stages))
  keep = with_last(1.0)
  if spec.last_stage == 'remove':
    set_skip(config, with_last(0.0))
  elif spec.last_stage == 'scale':
    k = ssf_k(name) if k is None else k
    set_skip(config, with_last(f'learn:{k}' if learn else k))
    if learn and concatenative:
      config.model.skip_mode = 'scale'  # truncation has no gradient in k
  else:
    set_skip(config, keep)
  if spec.bido:
    if not (config.bido.a1 or config.bido.a2):
      config.bido.a1, config.bido.a2 = BIDO_WEIGHTS
  else:
    config.bido.a1 = config.bido.a2 = 0.0
  if spec.two_stage:
    config.job = 'tts'
    config.tts = ml_collections.ConfigDict()
    config.tts.stage1_skip = keep  # stage 1: every skip kept
    config.tts.stage1_epochs = tts_stage1_epochs(tts_stage1_fraction, config.train.epochs)  # M; stage 2 runs N
    config.tts.lr_schedule = 'continue'  # 'continue' across stages, or 'restart' in stage 2
    config.tts.reinit = ('skip_scale',)  # target leaves that may start fresh (a learnable k)
    config.tts.drop = ('skip_scale',)  # source leaves that may be left behind
    if concatenative:  # truncation changes the parameter tree; scaling keeps it, so stage 1's weights fit
      config.model.skip_mode = 'scale'
  return config
