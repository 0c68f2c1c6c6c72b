"""GPU benchmark suite: PPA's attack step at the paper's sizes and the training step, JAX against PyTorch.

  python bench/gpu_suite.py --out=$OUT --stylegan2_ada=.sg2ada     # one GPU, the paper's sizes, <= 8 minutes
  python bench/gpu_suite.py --preset=cpu_tiny                      # anywhere: tiny sizes, a smoke run

Prints one table, and writes it as gpu_suite.md and gpu_suite.json (with the parts' stderr in
gpu_suite.log) to --out. The parts, in the order they run:
  attack:<mode>  the project's jitted PPA step (bench/attack_step.py's, built as mi_jax/attacks/ppa.py
                 builds it: a random StyleGAN2 generator and target, Adam on w) at PPA's batch, in one
                 precision mode: fp32-highest (true float32), tf32 (jax's default matmul precision) or
                 bf16 (the generator computes in bfloat16, the target as tf32). Images/s (latent-steps/s),
                 peak device memory, MFU from XLA's FLOP count.
  attack:torch   the same step in PyTorch at every batch: NVIDIA's StyleGAN2-ADA code (--stylegan2_ada,
                 never part of this project) and a torchvision target, in PyTorch's default precision
                 (TF32 convolutions), as PPA runs it.
  train          one training step of --train_models, the project's (bench/train_step.py) against
                 torchvision's; on a GPU JAX computes in bfloat16, torch under bf16 autocast, channels-last.
  sweep:<mode>   the rest of the batch sweep, then the largest batch that fits without and with remat
                 (a doubling search up to --max_batch_cap that stops at the first out-of-memory error).
Each part runs in a process of its own: it starts with the whole GPU, its peak memory is its own, and
bench/attack_step.py and bench/train_step.py, whose flags share names, are never imported together.
Each gets a share of --budget_s, the most important first; what would overrun its share is skipped
('n/a (time budget)'), and a part still running 30 s past the whole budget is stopped. Random weights throughout; every rate is the
best of --best_of timed repeats after a warm-up call (bench/_timing.py).
"""

import dataclasses
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from mi_jax.attacks import optimize
import _official  # bench/, beside this script
import _timing  # bench/, beside this script

PRESETS = {
    'paper': dict(
        # FFHQ's 1024 px StyleGAN2 (GeneratorConfig's defaults) and a 530-class ResNet-152 at 224 (FaceScrub).
        attack=dict(gen={}, crop=800, size=224, model='resnet152', stem='imagenet', width=0, num_classes=530),
        ppa_batch=25,  # PPA's batch per GPU: measured first, in every mode
        sweep=[8, 25, 50],
        max_batch_cap=1024,
        train_models=['resnet50', 'resnet152', 'densenet121'],
        train_size=224,
        train_batch=128,
        calls=2,  # timed calls per repeat
    ),
    'cpu_tiny': dict(
        attack=dict(
            gen=dict(
                img_resolution=32,
                img_channels=3,
                z_dim=64,
                w_dim=64,
                mapping_layers=2,
                channel_base=1024,
                channel_max=128,
            ),
            crop=0,
            size=32,
            model='resnet18',
            stem='imagenet',
            width=0,
            num_classes=10,
        ),
        ppa_batch=2,
        sweep=[1, 2],
        max_batch_cap=4,
        train_models=['resnet18'],
        train_size=32,
        train_batch=2,
        calls=1,
    ),
}


@dataclasses.dataclass(frozen=True)
class Mode:
  precision: str  # jax_default_matmul_precision
  dtype: str  # the generator's compute dtype
  peak: str  # the --peak_tflops entry MFU divides by
  search: str  # the max-batch row this mode measures; '' = none (its buffers are another mode's)


MODES = {
    'fp32-highest': Mode('highest', 'float32', 'fp32', ''),
    'tf32': Mode('default', 'float32', 'tf32', 'fp32 & tf32 (f32 buffers)'),
    'bf16': Mode('default', 'bfloat16', 'bf16', 'bf16 generator'),
}
# The run order: what the targets need first (tf32 and PyTorch at PPA's batch, training), extras last.
PARTS = [
    'attack:tf32',
    'attack:torch',
    'train',
    'attack:bf16',
    'attack:fp32-highest',
    'sweep:tf32',
    'sweep:bf16',
    'sweep:fp32-highest',
]
WEIGHTS = {'train': 1.5, 'sweep:fp32-highest': 0.5}  # shares of the budget; the other parts weigh 1

_PRESET = flags.DEFINE_enum('preset', 'paper', list(PRESETS), "Sizes: the paper's, or tiny ones for a CPU.")
_OUT = flags.DEFINE_string('out', '', 'Directory for gpu_suite.md, .json and .log; empty: print only.')
_STYLEGAN2_ADA = flags.DEFINE_string(
    'stylegan2_ada',
    os.environ.get('STYLEGAN2_ADA_PYTORCH', ''),
    'A checkout of NVlabs/stylegan2-ada-pytorch for the PyTorch attack step (default: $STYLEGAN2_ADA_PYTORCH).',
)
_TORCH_CUSTOM_OPS = flags.DEFINE_bool(
    'torch_custom_ops', True, "Build StyleGAN2-ADA's CUDA ops (about a minute; PPA uses them); off: its reference ops."
)
_PARTS = flags.DEFINE_list('parts', PARTS, 'Parts to run.')
_PPA_BATCH = flags.DEFINE_integer('ppa_batch', None, "The batch every mode measures first (default: the preset's).")
_SWEEP = flags.DEFINE_list('sweep', None, "Attack batch sizes (default: the preset's).")
_MAX_BATCH_CAP = flags.DEFINE_integer('max_batch_cap', None, 'Largest batch the max-batch search tries.')
_ATTACK_STEPS = flags.DEFINE_integer('attack_steps', 1, 'Adam steps per attack call (one scan).')
_TRAIN_MODELS = flags.DEFINE_list('train_models', None, "Models of the training part (default: the preset's).")
_TRAIN_SIZE = flags.DEFINE_integer('train_size', None, 'Training input size.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', None, 'Training batch.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 5, 'Timed training steps per repeat.')
_TRAIN_PRECISION = flags.DEFINE_enum(
    'train_precision', 'auto', ['auto', 'fp32', 'mixed'], 'mixed: JAX bf16 / torch bf16 autocast; auto: mixed on a GPU.'
)
# Not --repeats: bench/attack_step.py and bench/train_step.py, which the parts import, define that one.
_BEST_OF = flags.DEFINE_integer('best_of', 3, 'Timed repeats; the best is reported.')
_PEAK_TFLOPS = flags.DEFINE_list(
    'peak_tflops',
    ['fp32=67', 'tf32=495', 'bf16=989'],
    'Dense peak TFLOP/s per precision, for MFU (default: H200 SXM). On a CPU MFU is shown only when this is given.',
)
_BUDGET_S = flags.DEFINE_float('budget_s', 420.0, 'Seconds for all parts together (30 s more at worst).')
_PART = flags.DEFINE_string('part', '', 'Internal: run this one part and write its rows to --part_json.')
_PART_JSON = flags.DEFINE_string('part_json', '', 'Internal: where the part writes its rows.')
_DEADLINE = flags.DEFINE_float('deadline', 0.0, 'Internal: time.time() by which the part should be done.')
_FITTED = flags.DEFINE_list('fitted', [], "Internal: batches an earlier part ran in this sweep part's mode.")
_ESTIMATE_S = flags.DEFINE_float('estimate_s', 0.0, 'Internal: how long one batch took the earlier part.')

GRACE_S = 30  # how long a part may overrun the whole budget before it is stopped


def setting(flag):
  """A flag's value, or the preset's when the flag is unset."""
  value = flag.value if flag.value is not None else PRESETS[_PRESET.value][flag.name]
  return sorted(int(v) for v in value) if flag.name == 'sweep' else value


def all_batches() -> list[int]:
  return sorted(set(setting(_SWEEP)) | {setting(_PPA_BATCH)})


# ---------------------------------------------------------------------------- one part, in its own process


class PartLog:
  """A part's rows and environment, rewritten to --part_json after each row so that a stopped part keeps them."""

  def __init__(self, path):
    self.path, self.data = path, {'env': {}, 'rows': []}

  def env(self, **values):
    self.data['env'].update(values)
    self.write()

  def row(self, key, **values):
    self.data['rows'].append({'key': list(key), **values})
    self.write()
    print(f'  {key}: {values}', flush=True)

  def write(self):
    with open(self.path + '.tmp', 'w') as f:
      json.dump(self.data, f)
    os.replace(self.path + '.tmp', self.path)


def time_left(estimate_s: float) -> bool:
  """Whether work expected to take `estimate_s` seconds still fits in this part's share of the budget."""
  return not _DEADLINE.value or time.time() + estimate_s <= _DEADLINE.value


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower() or 'failed to allocate' in text.lower()


def jax_env(log):
  device = jax.devices()[0]
  log.env(
      device=device.device_kind,
      platform=device.platform,
      jax=jax.__version__,
      jaxlib=importlib.import_module('jaxlib').__version__,
      jax_backend=' '.join(str(getattr(device.client, 'platform_version', '?')).split()),
  )


def peak_bytes():
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return stats.get('peak_bytes_in_use') if stats else None


def peak_tflops() -> dict:
  return {k: float(v) for k, v in (item.split('=') for item in _PEAK_TFLOPS.value)}


def show_mfu() -> bool:
  """The default peaks are a GPU's: on a CPU MFU means something only with peaks given for it."""
  return jax.default_backend() != 'cpu' or flags.FLAGS['peak_tflops'].present


def flop_count(stage) -> float | None:
  """XLA's FLOP count of a jax Lowered or Compiled program."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list of one dict in older jax
  flops = float((cost or {}).get('flops', 0.0))
  return flops if flops > 0 else None


def compile_attack_step(attack_step, world, batch):
  """(the project's attack step compiled for `batch`, its arguments, (FLOPs of one call as compiled, as traced)).

  The count as traced (before XLA's optimisations) is kept beside the compiled one as a check of it.
  """
  fn, args = attack_step.build(PRESETS[_PRESET.value]['attack'], 1, batch, world.settings.steps, world)
  lowered = fn.lower(*args)
  compiled = lowered.compile()
  return compiled, args, (flop_count(compiled), flop_count(lowered))


def flops_per_image_step(attack_step, world, batch, flops):
  """(compiled, traced) FLOPs of one Adam step of one latent. XLA counts a scan's body once whatever its
  length (jaxlib 0.10), so with several steps per call they come from a one-step compile."""
  if world.settings.steps != 1:
    one_step = world._replace(settings=dataclasses.replace(world.settings, steps=1))
    flops = compile_attack_step(attack_step, one_step, batch)[2]
  return [f / batch if f else None for f in flops]


def time_attack_batch(attack_step, world, batch, mode, log):
  """Measures one batch of the attack step and logs its row; False if it ran out of device memory."""
  key, steps = ('attack', mode, batch), world.settings.steps
  start = time.time()
  try:
    compiled, args, flops = compile_attack_step(attack_step, world, batch)
    compile_s = time.time() - start
    run = lambda n: jax.block_until_ready([compiled(*args) for _ in range(n)])
    rate = _timing.best_rates({'jax': run}, PRESETS[_PRESET.value]['calls'], _BEST_OF.value, batch * steps)['jax']
  except Exception as e:  # pylint: disable=broad-except
    if not is_out_of_memory(e):
      raise
    log.row(key, jax='n/a (out of memory)')
    return False
  per_image, per_image_traced = flops_per_image_step(attack_step, world, batch, flops)
  peak = peak_tflops().get(MODES[mode].peak) if show_mfu() else None
  mfu = per_image * rate / (peak * 1e12) if per_image and peak else None
  log.row(
      key,
      jax=rate,
      mfu=mfu,
      peak_bytes=peak_bytes(),
      flops_per_image_step=per_image,
      flops_per_image_step_traced=per_image_traced,
      compile_s=compile_s,
      seconds=time.time() - start,
  )
  return True


def attack_part(mode_name: str, batches: list[int], search: bool, log):
  """Times `batches` (ascending: the peak memory after each is its own) in one mode, then searches."""
  import attack_step  # pylint: disable=g-import-not-at-top  # only here: its flags clash with train_step's

  mode = MODES[mode_name]
  jax.config.update('jax_default_matmul_precision', mode.precision)
  jax_env(log)
  world = attack_step.build_world(PRESETS[_PRESET.value]['attack'], _ATTACK_STEPS.value, getattr(jnp, mode.dtype))
  fitted, failed, last_s = [int(b) for b in _FITTED.value], None, _ESTIMATE_S.value
  for batch in batches:
    if failed or (last_s and not time_left(1.5 * last_s)):  # with nothing measured yet, measure
      why = f'n/a ({failed} ran out of memory)' if failed else 'n/a (time budget)'
      log.row(('attack', mode_name, batch), jax=why)
      continue
    start = time.time()
    if time_attack_batch(attack_step, world, batch, mode_name, log):
      fitted.append(batch)
    else:
      failed = batch
    last_s = time.time() - start
  if search and mode.search:
    search_max_batch(attack_step, world, mode.search, max(fitted, default=None), failed, last_s, log)


def fits(attack_step, world, batch) -> bool:
  """Whether one call of the attack step at `batch` compiles and runs without running out of device memory."""
  try:
    compiled, args, _ = compile_attack_step(attack_step, world, batch)
    jax.block_until_ready(compiled(*args))
    return True
  except Exception as e:  # pylint: disable=broad-except
    if not is_out_of_memory(e):
      raise
    return False


def doubling_search(try_batch, first: int, cap: int, known: int | None, estimate_s: float):
  """(the largest of first, 2 first, 4 first... <= cap that fits, else `known`; the table cell saying so).

  `known`: a batch known to fit. The search stops at the first batch that runs out of memory.
  """
  batch = first
  while batch <= cap:
    if not time_left(estimate_s):
      return known, f'>= {known} (time budget)' if known else 'n/a (time budget)'
    start = time.time()
    if not try_batch(batch):
      return known, f'{known} ({batch}: out of memory)' if known else f'< {batch} (out of memory)'
    known, estimate_s, batch = batch, 1.5 * (time.time() - start), 2 * batch
  return known, f'>= {known} (cap)' if known else f'n/a ({first} > --max_batch_cap)'


def search_max_batch(attack_step, world, label, fitted, failed, estimate_s, log):
  """The largest batch without remat (doubling from the largest that fitted), then with the generator
  recomputed in the backward pass (from the largest without, which must fit too)."""
  cap = setting(_MAX_BATCH_CAP)
  plain = fitted
  if fitted is None:
    cell = 'n/a (no batch fitted)'
  elif failed:  # the sweep already ran out of memory: nothing to search
    cell = f'{fitted} ({failed}: out of memory)'
  else:
    plain, cell = doubling_search(lambda b: fits(attack_step, world, b), 2 * fitted, cap, fitted, estimate_s)
  log.row(('max_batch', label, 'no remat'), batch=cell)
  remat = world._replace(settings=dataclasses.replace(world.settings, remat=True))
  _, cell = doubling_search(lambda b: fits(attack_step, remat, b), plain or all_batches()[0], cap, None, estimate_s)
  log.row(('max_batch', label, 'remat'), batch=cell)


def torch_poincare_loss(logits, targets, xi: float):
  """mi_jax.attacks.losses.poincare_loss (PPA's losses/poincare.py) in torch, per sample."""
  import torch  # pylint: disable=g-import-not-at-top

  u = logits / logits.abs().sum(dim=1, keepdim=True)
  v = torch.clamp(torch.nn.functional.one_hot(targets, logits.shape[1]).to(logits.dtype) - xi, 0.0, 1.0)
  delta = 2.0 * (u - v).square().sum(1) / ((1.0 - u.square().sum(1)) * (1.0 - v.square().sum(1)))
  return torch.acosh(1.0 + delta)


def generator_config():
  from mi_jax.stylegan import networks  # pylint: disable=g-import-not-at-top

  return networks.GeneratorConfig(**PRESETS[_PRESET.value]['attack']['gen'])


def official_generator(path: str, device):
  """(NVIDIA's StyleGAN2-ADA generator at the preset's config, random and frozen: only w gets gradients;
  its two custom-op modules)."""
  sys.path.insert(0, os.path.abspath(path))
  from torch_utils.ops import bias_act, upfirdn2d  # pylint: disable=g-import-not-at-top

  if not _TORCH_CUSTOM_OPS.value:
    for op in (bias_act, upfirdn2d):
      op._inited, op._plugin = True, None  # pylint: disable=protected-access  # as if their build had failed
  G = _official.official_generator(path, generator_config(), num_fp16_res=0, conv_clamp=None)
  return G.to(device), (bias_act, upfirdn2d)


def torch_attack_run(G, target, batch: int, device):
  """run(n): n calls of --attack_steps PPA steps in PyTorch, as PPA's attacks/optimize.py takes them."""
  import torch  # pylint: disable=g-import-not-at-top
  from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top

  transforms = torch_compat.import_torchvision().transforms
  setup, settings = PRESETS[_PRESET.value]['attack'], optimize.OptimizeSettings()
  w = torch.randn(batch, 1, G.w_dim, device=device).requires_grad_(True)
  targets = torch.arange(batch, device=device) % setup['num_classes']
  adam = torch.optim.Adam([w], lr=settings.lr, betas=settings.betas)
  crop = transforms.RandomResizedCrop(setup['size'], settings.rrc_scale, settings.rrc_ratio, antialias=True)

  def step():
    adam.zero_grad(set_to_none=True)
    images = G.synthesis(w.repeat(1, G.num_ws, 1), noise_mode='const', force_fp32=True)
    if setup['crop']:
      images = transforms.functional.center_crop(images, setup['crop'])
    if images.shape[-1] != setup['size']:
      images = transforms.functional.resize(images, [setup['size']] * 2, antialias=True)
    torch_poincare_loss(target(crop(images)), targets, settings.poincare_xi).mean().backward()
    adam.step()

  def run(n):
    for _ in range(n * _ATTACK_STEPS.value):
      step()
    if torch.device(device).type == 'cuda':  # kernels run asynchronously: wait for the last one
      torch.cuda.synchronize()

  return run


def torch_env(log, torch, device):
  on_gpu = torch.device(device).type == 'cuda'
  log.env(
      torch=torch.__version__,
      torch_cuda=torch.version.cuda or 'none',
      cudnn=str(torch.backends.cudnn.version()) if on_gpu else 'none',
      torch_device=torch.cuda.get_device_name() if on_gpu else 'cpu',
  )


def torch_attack_part(log):
  import torch  # pylint: disable=g-import-not-at-top
  from mi_jax.convert import torch_compat  # pylint: disable=g-import-not-at-top

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
  torch_env(log, torch, device)
  setup = PRESETS[_PRESET.value]['attack']
  G, ops = official_generator(_STYLEGAN2_ADA.value, device)
  target = getattr(torch_compat.import_torchvision().models, setup['model'])(num_classes=setup['num_classes'])
  target = target.to(device).eval().requires_grad_(False)
  last_s, calls = 0.0, PRESETS[_PRESET.value]['calls']
  batches = sorted(all_batches(), key=lambda b: b != setting(_PPA_BATCH))  # PPA's batch first
  for batch in batches:
    if last_s and not time_left(1.5 * last_s):
      log.row(('attack', 'torch', batch), torch='n/a (time budget)')
      continue
    start = time.time()
    try:
      run = torch_attack_run(G, target, batch, device)
      rate = _timing.best_rates({'torch': run}, calls, _BEST_OF.value, batch * _ATTACK_STEPS.value)['torch']
    except torch.cuda.OutOfMemoryError:
      log.row(('attack', 'torch', batch), torch='n/a (out of memory)')
      continue
    finally:
      if device == 'cuda':
        torch.cuda.empty_cache()  # each batch starts from an empty cache, as a fresh process would
    log.row(('attack', 'torch', batch), torch=rate)
    last_s = time.time() - start
  built = all(op._plugin is not None for op in ops)  # pylint: disable=protected-access
  log.env(torch_ops='custom CUDA ops' if built else 'reference ops')


def torch_unavailable(on_gpu: bool) -> str:
  """'' when torch can run beside JAX here, else the table's reason why not."""
  if importlib.util.find_spec('torch') is None:
    return 'n/a (torch not installed)'
  import torch  # pylint: disable=g-import-not-at-top

  if on_gpu and not torch.cuda.is_available():
    return 'n/a (torch has no CUDA)'
  return ''


def train_part(log):
  import train_step  # pylint: disable=g-import-not-at-top  # only here: its flags clash with attack_step's

  jax_env(log)
  on_gpu = jax.default_backend() == 'gpu'
  mixed = _TRAIN_PRECISION.value == 'mixed' or (_TRAIN_PRECISION.value == 'auto' and on_gpu)
  log.env(train_precision='JAX bf16, torch bf16 autocast + channels-last' if mixed else 'float32 both')
  no_torch, device = torch_unavailable(on_gpu), 'cuda' if on_gpu else 'cpu'
  if not no_torch:
    import torch  # pylint: disable=g-import-not-at-top

    torch.backends.cudnn.benchmark = True
    torch_env(log, torch, device)
  size, batch = setting(_TRAIN_SIZE), setting(_TRAIN_BATCH)
  classes, last_s = PRESETS[_PRESET.value]['attack']['num_classes'], 0.0
  for name in setting(_TRAIN_MODELS):
    if last_s and not time_left(1.2 * last_s):
      log.row(('train', name), jax='n/a (time budget)', torch='n/a (time budget)')
      continue
    start = time.time()
    runs = {'jax': train_step.jax_step_fn(name, batch, size, classes, dtype='bfloat16' if mixed else 'float32')}
    if not no_torch:
      runs['torch'] = train_step.torch_step_fn(name, batch, size, classes, device, channels_last=mixed, amp=mixed)
    best = _timing.best_rates(runs, _TRAIN_STEPS.value, _BEST_OF.value, units_per_call=batch)
    log.row(('train', name), jax=best['jax'], torch=best.get('torch', no_torch), seconds=time.time() - start)
    last_s = time.time() - start
    del runs


def run_part(part: str):
  log = PartLog(_PART_JSON.value)
  kind, _, mode = part.partition(':')
  if part == 'attack:torch':
    torch_attack_part(log)
  elif part == 'train':
    train_part(log)
  elif kind == 'attack':
    attack_part(mode, [setting(_PPA_BATCH)], False, log)
  else:
    attack_part(mode, [b for b in all_batches() if b != setting(_PPA_BATCH)], True, log)


# ---------------------------------------------------------------------------- the suite: parts, then one table


def skip_reason(part: str) -> str:
  """Why a part cannot or need not run here ('' if it runs)."""
  if part.startswith('sweep:') and all_batches() == [setting(_PPA_BATCH)] and not MODES[part[6:]].search:
    return 'n/a (nothing to sweep)'
  if part != 'attack:torch':
    return ''
  path = _STYLEGAN2_ADA.value
  if not path or not os.path.isdir(os.path.join(path, 'training')):
    return 'n/a (no StyleGAN2-ADA checkout: --stylegan2_ada)'
  return torch_unavailable(on_gpu=False)


def sweep_flags(results: dict, part: str) -> list[str]:
  """What a sweep part learns from its mode's attack part: PPA's batch fitted, and how long it took."""
  mode = part.split(':')[1]
  for row in results.get(f'attack:{mode}', {'rows': []})['rows']:
    if tuple(row['key']) == ('attack', mode, setting(_PPA_BATCH)) and isinstance(row.get('jax'), float):
      return [f'--fitted={setting(_PPA_BATCH)}', f'--estimate_s={row["seconds"]}']
  return []


def launch(part: str, share_s: float, hard_s: float, extra: list[str], workdir: str, log_file) -> dict:
  """Runs one part in a child process (stopped after `hard_s`); returns its rows, env and fate."""
  path = os.path.join(workdir, part.replace(':', '_') + '.json')
  env = dict(os.environ)
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # torch and the max-batch search need what JAX does not use
  env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.95')
  # The parts build the same generator and target: their initialisation compiles once for all.
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(workdir, 'jax_cache'))
  command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], *extra]
  command += [f'--part={part}', f'--part_json={path}', f'--deadline={time.time() + share_s}']
  print(f'{part}: {share_s:.0f} s share', flush=True)
  log_file.write(f'==== {part}\n')
  log_file.flush()
  fate, start = '', time.time()
  try:
    result = subprocess.run(command, env=env, stderr=log_file, timeout=hard_s, check=False)
    if result.returncode:
      error = last_line(log_file.name)
      print(f'{part} failed: {error}', flush=True)
      fate = f'n/a ({part} failed: {error.split(":")[0].split(".")[-1][:40]})'
  except subprocess.TimeoutExpired:
    fate = f'n/a ({part} stopped at the budget)'
  print(f'{part}: {time.time() - start:.0f} s', flush=True)
  data = {'env': {}, 'rows': []}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  return {**data, 'fate': fate}


def last_line(path: str) -> str:
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  return (lines[-1] if lines else 'no output')[:160]


def run_parts(workdir: str, log_path: str) -> dict:
  """{part: its result}. Each part starts when the one before it ends, with a share of the budget left."""
  parts = [p for p in PARTS if p in _PARTS.value]
  results, end = {}, time.time() + _BUDGET_S.value
  with open(log_path, 'w') as log_file:
    for i, part in enumerate(parts):
      left = end - time.time()
      share = left * WEIGHTS.get(part, 1.0) / sum(WEIGHTS.get(p, 1.0) for p in parts[i:])
      if skip_reason(part) or left < 10:
        results[part] = {'env': {}, 'rows': [], 'fate': skip_reason(part) or 'n/a (time budget)'}
        continue
      extra = sweep_flags(results, part) if part.startswith('sweep:') else []
      results[part] = launch(part, share, left + GRACE_S, extra, workdir, log_file)
  return results


def table_rows(results: dict) -> list[dict]:
  """Every row the suite promises, from the parts' results; a missing value says why it is missing."""

  def lookup(part, key, field, why=True):
    """The value of `field` in the row `key` of `part`; without that row, why not (or '–' if not `why`)."""
    result = results.get(part)
    for row in result['rows'] if result else ():
      if tuple(row['key']) == key:
        return row.get(field, '–')
    if not why:
      return '–'
    return 'n/a (not run: --parts)' if result is None else result['fate'] or 'n/a (not measured)'

  rows = []
  for mode in MODES:
    for batch in all_batches():
      part = f'attack:{mode}' if batch == setting(_PPA_BATCH) else f'sweep:{mode}'
      key = ('attack', mode, batch)
      jax_rate, torch_rate = lookup(part, key, 'jax'), lookup('attack:torch', ('attack', 'torch', batch), 'torch')
      values = {f: lookup(part, key, f, why=False) for f in ('mfu', 'peak_bytes')}
      rows.append(
          dict(
              part='attack',
              case=mode,
              batch=batch,
              jax=jax_rate,
              torch=torch_rate,
              ratio=ratio(jax_rate, torch_rate),
              **values,
          )
      )
  for mode_name, mode in MODES.items():
    for remat in ('no remat', 'remat') if mode.search else ():
      batch = lookup(f'sweep:{mode_name}', ('max_batch', mode.search, remat), 'batch')
      rows.append(dict(part='attack max batch', case=f'{mode.search}, {remat}', batch=batch))
  for name in setting(_TRAIN_MODELS):
    jax_rate, torch_rate = lookup('train', ('train', name), 'jax'), lookup('train', ('train', name), 'torch')
    rows.append(
        dict(
            part='train',
            case=name,
            batch=setting(_TRAIN_BATCH),
            jax=jax_rate,
            torch=torch_rate,
            ratio=ratio(jax_rate, torch_rate),
        )
    )
  return rows


def ratio(a, b):
  return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else '–'


COLUMNS = {
    'part': 'part',
    'case': 'case',
    'batch': 'batch',
    'jax': 'JAX img/s',
    'mfu': 'MFU',
    'peak_bytes': 'JAX peak mem',
    'torch': 'PyTorch img/s',
    'ratio': 'JAX/PyTorch',
}


def cell(field: str, value) -> str:
  if value is None:
    return 'n/a'
  if not isinstance(value, float):
    return str(value)
  if field == 'mfu':
    return f'{100 * value:.1f}%'
  if field == 'peak_bytes':
    return f'{value / 2**30:.2f} GiB'
  return f'{value:.2f}' if field == 'ratio' or value < 10 else f'{value:.1f}' if value < 1000 else f'{value:.0f}'


def header_lines(env: dict) -> list[str]:
  attack, gen = PRESETS[_PRESET.value]['attack'], generator_config()
  return [
      f'gpu_suite, preset {_PRESET.value}: {env.get("device", "?")} ({env.get("platform", "?")}); '
      f'PyTorch on {env.get("torch_device", "n/a")}',
      f'jax {env.get("jax", "?")}, jaxlib {env.get("jaxlib", "?")} ({env.get("jax_backend", "?")}); torch '
      f'{env.get("torch", "n/a")} (CUDA {env.get("torch_cuda", "n/a")}, cuDNN {env.get("cudnn", "n/a")}); '
      f'Python {platform.python_version()}',
      f'attack: StyleGAN2 {gen.img_resolution} px (channel_base {gen.channel_base}) -> crop {attack["crop"]} -> '
      f'{attack["model"]} at {attack["size"]} px, {_ATTACK_STEPS.value} Adam step(s) per call; img/s = '
      f'latent-steps/s; StyleGAN2-ADA {env.get("torch_ops", "not run")}; MFU of peak TFLOP/s '
      f'{", ".join(_PEAK_TFLOPS.value)}',
      f'train: {setting(_TRAIN_SIZE)} px, Adam, {env.get("train_precision", "?")}; img/s = batch x steps/s',
  ]


def render(results: dict) -> tuple[str, str, dict]:
  """(the text table, the markdown table, the JSON record)."""
  env = {k: v for result in results.values() for k, v in result['env'].items()}
  rows, header = table_rows(results), header_lines(env)
  cells = [list(COLUMNS.values())] + [[cell(f, row.get(f, '–')) for f in COLUMNS] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
  lines = ['  '.join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
  markdown = [f'{line}  ' for line in header] + ['', '| ' + ' | '.join(cells[0]) + ' |', '|---' * len(COLUMNS) + '|']
  markdown += ['| ' + ' | '.join(r) + ' |' for r in cells[1:]]
  record = {'preset': _PRESET.value, 'env': env, 'header': header, 'rows': rows, 'parts': results}
  return '\n'.join(header + [''] + lines), '\n'.join(markdown), record


def main(argv):
  del argv
  if _PART.value:
    run_part(_PART.value)
    return
  started = time.time()
  with tempfile.TemporaryDirectory() as workdir:
    out = _OUT.value or workdir
    os.makedirs(out, exist_ok=True)
    results = run_parts(workdir, os.path.join(out, 'gpu_suite.log'))
  text, markdown, record = render(results)
  print(f'\n{text}\n\n({time.time() - started:.0f} s in all)', flush=True)
  if _OUT.value:
    with open(os.path.join(_OUT.value, 'gpu_suite.md'), 'w') as f:
      f.write(markdown + '\n')
    with open(os.path.join(_OUT.value, 'gpu_suite.json'), 'w') as f:
      json.dump(record, f, indent=1)


if __name__ == '__main__':
  app.run(main)
