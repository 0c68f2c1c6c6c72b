"""What a long job shows a person: progress lines with rate/ETA, TensorBoard + CSV metrics, image grids."""

import csv
import json
import math
import os
import time

from absl import logging
import jax
import numpy as np
import PIL.Image
import tensorboardX

from mi_jax import errors


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


# Every writer here writes on process 0 only (every process holds the same values: results are gathered
# first) and atomically (a temporary file renamed into place), so a killed job never leaves half a file.


def _on_process_zero() -> bool:
  return jax.process_index() == 0


def write_json(path: str, obj, indent: int | None = 2):
  """`obj` as JSON at `path`."""
  if _on_process_zero():
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=indent)
    os.replace(tmp, path)


def config_json(config) -> dict:
  """A ConfigDict as plain JSON data (what attack.json, results.json and run identities record)."""
  return json.loads(config.to_json_best_effort())


def _leaves(tree, prefix: str = '') -> dict:
  """{dotted path: value} of a JSON-like tree (lists are values)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_leaves(value, f'{prefix}.{key}' if prefix else str(key)))
  return out


def differing_leaves(old: dict, new: dict) -> dict:
  """{dotted path: (old value, new value)} of every leaf where two JSON-like trees differ."""
  old, new = _leaves(old), _leaves(new)
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


class DifferentRunError(errors.MiJaxError, ValueError):
  """A workdir that holds another run than the config describes."""


def check_same_run(saved: dict, current: dict, where: str, what: str = 'run', hint: str = ''):
  """Raises DifferentRunError listing every leaf (dotted) where `current` differs from `saved`.

  Both are the identity of a run: the config fields whose change makes its saved state meaningless.
  `hint` replaces the closing advice.
  """
  diffs = [
      f'  config.{k}: {where} has {old!r}, the config has {new!r}'
      for k, (old, new) in differing_leaves(saved, current).items()
  ]
  if diffs:
    raise DifferentRunError(
        f'{where} holds a different {what}:\n'
        + '\n'.join(diffs)
        + '\n'
        + (hint or 'Use a fresh --workdir, or relaunch with the config it was started with.')
    )


def append_history(workdir: str, event: dict):
  """Adds `event` (with the time) to `<workdir>/run_history.json`: what a relaunch changed in a run."""
  path = os.path.join(workdir, 'run_history.json')
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = json.load(f)
  write_json(path, history + [{'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), **event}])


def save_npz(path: str, **arrays):
  """np.savez to `path` (its directory made if need be)."""
  if _on_process_zero():
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def write_results(workdir: str, results: dict):
  """`<workdir>/results.json`: the summary a finished job leaves."""
  write_json(os.path.join(workdir, 'results.json'), results)


class NonFiniteError(errors.MiJaxError, FloatingPointError):
  """Training diverged: a logged or test metric is NaN or infinite (or a loss exploded)."""


def check_finite(
    step: int, metrics: dict, workdir: str, hint: str, what: str = 'training metrics', loss_limit: float = 0.0
):
  """Stops a run whose metrics went NaN/inf (or a loss past `loss_limit` > 0), before it is checkpointed."""
  bad = {
      k: v
      for k, v in metrics.items()
      if not np.isfinite(v) or (loss_limit > 0 and k.endswith('loss') and v > loss_limit)
  }
  if bad:
    limit = f' (a loss above {loss_limit:g} counts as diverged: config.train.diverged_loss)' if loss_limit > 0 else ''
    raise NonFiniteError(
        f'diverged: {what} at step {step}: {bad}{limit}. Nothing after the last checkpoint in {workdir}/checkpoints '
        f'was saved. {hint}'
    )


class Progress:
  """Logs 'step i/N (p%) | x steps/s, y ex/s | ETA ...' whenever `update` gets metrics.

  Rates are measured from the end of the first update, so compilation does not
  distort the ETA.
  """

  def __init__(self, total_steps: int, examples_per_step: int, name: str = 'train'):
    self.total, self.examples_per_step, self.name = total_steps, examples_per_step, name
    self._t0 = self._step0 = self._t_last = self._step_last = None

  def update(self, step: int, metrics: dict | None = None):
    """Call after `step` steps are done; logs when `metrics` is given."""
    now = time.time()
    if self._t0 is None:
      self._t0 = self._t_last = now
      self._step0 = self._step_last = step
      return
    if metrics is None:
      return
    rate = (step - self._step_last) / max(now - self._t_last, 1e-9)
    overall = (step - self._step0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / overall if overall > 0 else math.inf
    shown = ' '.join(f'{k}={float(v):.4g}' for k, v in metrics.items())
    logging.info(
        '%s step %d/%d (%.0f%%) | %.2f steps/s, %.1f ex/s | ETA %s | %s',
        self.name,
        step,
        self.total,
        100.0 * step / self.total,
        rate,
        rate * self.examples_per_step,
        format_duration(eta),
        shown,
    )
    self._t_last, self._step_last = now, step


class MetricWriter:
  """Scalars to TensorBoard event files and to `<workdir>/metrics.csv` (one row per step: the train
  summary and the test metrics of an evaluation step share a row).

  On resume from step S, rows written after S by the killed run are dropped from
  the CSV and purged from TensorBoard, so the curves show one consistent run.
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self.csv_path = os.path.join(workdir, 'metrics.csv')
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._rows = []
    if resume_step and os.path.exists(self.csv_path):
      with open(self.csv_path, newline='') as f:
        self._rows = [r for r in csv.DictReader(f) if int(r['step']) <= resume_step]
    elif os.path.exists(self.csv_path):
      os.remove(self.csv_path)  # a fresh run in a used workdir starts a fresh table
    self._flush_csv()
    self._tb = tensorboardX.SummaryWriter(
        os.path.join(workdir, 'tensorboard'), purge_step=resume_step + 1 if resume_step else None
    )

  def write_scalars(self, step: int, scalars: dict):
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    if self._rows and int(self._rows[-1]['step']) == step:
      self._rows[-1].update(values)
    else:
      self._rows.append({'step': step, 'time': f'{time.time():.3f}', **values})
    self._flush_csv()

  def write_images(self, step: int, name: str, grid: np.ndarray):
    if self.enabled:
      self._tb.add_image(name, grid, step, dataformats='HWC')

  def write_grid(self, step: int, name: str, images, path: str) -> np.ndarray:
    """images [N, H, W, C] in [-1, 1] as one grid: a PNG at `path` and a TensorBoard image; returns the grid."""
    grid = image_grid(np.asarray(images))
    save_png(path, grid)
    self.write_images(step, name, grid)
    return grid

  def _flush_csv(self):
    fields = ['step', 'time'] + sorted({k for r in self._rows for k in r} - {'step', 'time'})
    tmp = self.csv_path + '.tmp'
    with open(tmp, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=fields)
      writer.writeheader()
      writer.writerows(self._rows)
    os.replace(tmp, self.csv_path)  # never a half-written table

  def close(self):
    if self.enabled:
      self._tb.close()


def image_grid(images: np.ndarray, ncols: int = 8, pad: int = 2) -> np.ndarray:
  """[N, H, W, C] images in [-1, 1] -> one uint8 [H', W', 3] grid (grey tiles become RGB)."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  if c == 1:
    images = np.repeat(images, 3, axis=-1)
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
  tiles = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = tiles[i]
  return grid


def save_png(path: str, grid: np.ndarray):
  """A uint8 grid (image_grid) as a PNG at `path` (its directory made if need be)."""
  if _on_process_zero():
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp.png'
    PIL.Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)
