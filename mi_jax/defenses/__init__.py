"""Defenses: what each row of the study changes in a classifier config, and their machinery.

  defend(config, 'rolss') -> the classifier config trained with that defense (a copy)
  defend(config, 'rolss+negls') -> several defenses at once: names of DEFENSES joined with '+'

RoLSS and SSF are skip settings of the model (mi_jax.models); TTS is a second job over two
configs (tts.py, with the param-tree transplant of transplant.py); BiDO (bido.py) and MID (mid.py, with
the bottleneck head of mi_jax/models/vib.py) loss terms; LS/NegLS (label_smoothing.py) the targets;
TL-DMI a pretraining and a frozen fine-tuning (transfer.py, the tl_dmi job); Trap-MID (trapdoor.py) a
trapdoor trained beside the model; MIDRE random erasing in the input pipeline (mi_jax/data/augment.py).
The configs/*.py files and the study (mi_jax/reproduce.py) both build their cells here. Adding a
defense is one entry in DEFENSES (and its mechanism, if it needs a new one).
"""

import dataclasses

import ml_collections

from mi_jax import models
from mi_jax.defenses import trapdoor

# BiDO's CelebA weights (Peng et al., Defend_MI); the RoLSS paper does not say which it used.
BIDO_WEIGHTS = (0.05, 0.5)
# SSF's k in the paper's rows (the RoLSS code's scripts/attack.sh): additive skips, concatenative skips.
SSF_K = {False: 0.2, True: 0.01}
# TTS: M = 5 of 100 epochs with every skip, then N = 95 without the last stage's.
TTS_STAGE1_FRACTION = 0.05
# MID's beta: its VGG16 on CelebA (Jiachen-T-Wang/mi-defense gmi/target/train_vib.py); none is published for the
# PPA protocol. Defend_MI's comparisons also use 0.01 and 0.02.
MID_BETA = 0.003
# Label smoothing's alpha: NegLS -0.05 (Trap-MID's classify_trap_negls.json, the MI toolbox's
# celeba64_ir152_ls.py); LS +0.1 (the paper's positive value as we recall it: its released configs ship 0).
NEGLS_ALPHA = -0.05
LS_ALPHA = 0.1
# TL-DMI's freeze point where config.transfer.finetune_from names none: the last stage (no value is published for
# these families; TL-DMI's IR152 fine-tunes its last 4 of 50 units, its VGG16 from conv4_2 on).
TL_DMI_FINETUNE_FROM = {'resnet': 'layer4', 'densenet': 'denseblock4'}
# MIDRE: torchvision RandomErasing on every training image, square boxes of 10-40% of the area, filled with
# these values in the normalised [-1, 1] space (ngoc-nguyen-0/MIDRE_TMLR,
# configs/training/targets/ResNet18_FaceScrub_midre_0.4.yaml; a 0.1-0.8 variant exists).
MIDRE_ERASING = {
    'erase_p': 1.0,
    'erase_scale': (0.1, 0.4),
    'erase_ratio': (1.0, 1.0),
    'erase_value': (0.485, 0.456, 0.406),
}


@dataclasses.dataclass(frozen=True)
class Defense:
  label: str  # the row's name in tables
  last_stage: str = 'keep'  # the last stage's skips: 'keep', 'remove' (RoLSS) or 'scale' (SSF)
  job: str = 'train'  # 'tts' (TTS) or 'tl_dmi' (TL-DMI): two stages, the second attacked
  bido: bool = False  # the BiDO-HSIC loss term
  mid: bool = False  # MID's bottleneck and KL term
  smoothing: float = 0.0  # label smoothing's alpha: > 0 LS, < 0 NegLS
  trapdoor: bool = False  # Trap-MID's trapdoor
  erasing: bool = False  # MIDRE's random erasing

  @property
  def two_stage(self) -> bool:
    return self.job != 'train'


DEFENSES = {
    'none': Defense('No defense'),
    'rolss': Defense('RoLSS', last_stage='remove'),
    'ssf': Defense('SSF', last_stage='scale'),
    'tts': Defense('TTS', last_stage='remove', job='tts'),
    'bido': Defense('BiDO', bido=True),
    'rolss_bido': Defense('RoLSS+BiDO', last_stage='remove', bido=True),
    'mid': Defense('MID', mid=True),
    'ls': Defense('LS', smoothing=LS_ALPHA),
    'negls': Defense('NegLS', smoothing=NEGLS_ALPHA),
    'tl_dmi': Defense('TL-DMI', job='tl_dmi'),
    'trap_mid': Defense('Trap-MID', trapdoor=True),
    'midre': Defense('MIDRE', erasing=True),
}


def defense_spec(name: str) -> Defense:
  """The Defense of a DEFENSES name, or of several joined with '+' ('rolss+negls'): one of them may change the
  last stage and one may be a two-stage job; the training-time parts add up."""
  parts = name.split('+')
  unknown = [p for p in parts if p not in DEFENSES]
  if unknown:
    raise ValueError(f"{unknown[0]!r} is not a defense; known: {sorted(DEFENSES)} (several joined with '+')")
  if len(parts) == 1:
    return DEFENSES[name]
  specs = [DEFENSES[p] for p in parts]
  for field, neutral, what in (('last_stage', 'keep', 'change the last stage'), ('job', 'train', 'are two-stage jobs')):
    setters = [p for p, spec in zip(parts, specs) if getattr(spec, field) != neutral]
    if len(setters) > 1:
      raise ValueError(f'defense {name!r}: {" and ".join(setters)} both {what}; combine at most one of them')
  pick = lambda field, neutral: next((getattr(s, field) for s in specs if getattr(s, field) != neutral), neutral)
  smoothing = [s.smoothing for s in specs if s.smoothing]
  if len(smoothing) > 1:
    raise ValueError(f'defense {name!r}: two label smoothings')
  return Defense(
      '+'.join(s.label for s in specs),
      last_stage=pick('last_stage', 'keep'),
      job=pick('job', 'train'),
      bido=any(s.bido for s in specs),
      mid=any(s.mid for s in specs),
      smoothing=smoothing[0] if smoothing else 0.0,
      trapdoor=any(s.trapdoor for s in specs),
      erasing=any(s.erasing for s in specs),
  )


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
  """A copy of the classifier `config` (its model.name set) trained with `defense` (a DEFENSES name, or several
  joined with '+').

  `k`: SSF's factor (default: ssf_k); `learn`: SSF's k learnt from k. A training-time defense keeps the
  settings its section already has (a study's, a preset's) where they are on, or gets the published ones;
  every defense the row does not name is turned off.
  """
  spec = defense_spec(defense)
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
  _set_training_defenses(config, spec)
  if spec.job == 'tts':
    config.job = 'tts'
    config.tts = ml_collections.ConfigDict()
    config.tts.stage1_skip = keep  # stage 1: every skip kept
    config.tts.stage1_epochs = tts_stage1_epochs(tts_stage1_fraction, config.train.epochs)  # M; stage 2 runs N
    config.tts.lr_schedule = 'continue'  # 'continue' across stages, or 'restart' in stage 2
    config.tts.reinit = ('skip_scale',)  # target leaves that may start fresh (a learnable k)
    config.tts.drop = ('skip_scale',)  # source leaves that may be left behind
    if concatenative:  # truncation changes the parameter tree; scaling keeps it, so stage 1's weights fit
      config.model.skip_mode = 'scale'
  elif spec.job == 'tl_dmi':
    config.job = 'tl_dmi'
    t = config.transfer
    family = models.family_of(name).name
    if not t.finetune_from and family in TL_DMI_FINETUNE_FROM:
      t.finetune_from = TL_DMI_FINETUNE_FROM[family]
    if config.model.init_file:  # the public weights are the file's (ImageNet): no pretraining stage
      t.pretrain_epochs = 0
    elif not t.pretrain_epochs:
      t.pretrain_epochs = config.train.epochs
  else:
    config.transfer.finetune_from = ''
  return config


def _set_training_defenses(config: ml_collections.ConfigDict, spec: Defense):
  """Each training-time defense on (with its section's settings, or the published ones) or off, as `spec` says."""
  if spec.bido:
    if not (config.bido.a1 or config.bido.a2):
      config.bido.a1, config.bido.a2 = BIDO_WEIGHTS
  else:
    config.bido.a1 = config.bido.a2 = 0.0
  if spec.mid:
    config.mid.beta = config.mid.beta or MID_BETA
    config.model.vib_dim = config.model.vib_dim or max(
        1, models.head_input_width(config.model, config.data.image_size) // 2
    )  # the official k = feat_dim // 2
  else:
    config.mid.beta, config.model.vib_dim = 0.0, 0
  config.label_smoothing.alpha = spec.smoothing
  if spec.trapdoor:
    config.trapdoor.alpha = config.trapdoor.alpha or trapdoor.ALPHA
  else:
    config.trapdoor.alpha = 0.0
  if spec.erasing:
    if not config.data.augment.erase_p:
      config.data.augment.update(MIDRE_ERASING)
  else:
    config.data.augment.erase_p = 0.0
