"""bench/gpu_suite.py at its CPU preset: every part runs and the one table has every row it promises.

The PyTorch attack step needs NVIDIA's StyleGAN2-ADA code (STYLEGAN2_ADA_PYTORCH, as for
tests/test_stylegan_official.py); without it those cells must say why they are empty.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

BENCH = os.path.join(REPO_ROOT, 'bench')


@pytest.fixture(scope='module')
def gpu_suite():
  sys.path.insert(0, BENCH)
  try:
    import gpu_suite as module  # pylint: disable=g-import-not-at-top

    yield module
  finally:
    sys.path.remove(BENCH)


def test_doubling_search_stops_at_the_first_batch_out_of_memory(gpu_suite):
  tried = []

  def fits_up_to_12(batch):
    tried.append(batch)
    return batch <= 12

  assert gpu_suite.doubling_search(fits_up_to_12, 4, 1024, 2, 0.0) == (8, '8 (16: out of memory)')
  assert tried == [4, 8, 16]
  assert gpu_suite.doubling_search(fits_up_to_12, 16, 1024, None, 0.0) == (None, '< 16 (out of memory)')
  assert gpu_suite.doubling_search(lambda b: True, 4, 32, None, 0.0) == (32, '>= 32 (cap)')
  assert gpu_suite.doubling_search(lambda b: True, 64, 32, None, 0.0) == (None, 'n/a (64 > --max_batch_cap)')


def test_torch_poincare_loss_is_mi_jax_s(gpu_suite):
  torch = pytest.importorskip('torch')
  from mi_jax.attacks import losses  # pylint: disable=g-import-not-at-top

  logits = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
  targets = np.array([0, 3, 6, 2])
  want = losses.poincare_loss(logits, targets, 1e-4)
  got = gpu_suite.torch_poincare_loss(torch.tensor(logits), torch.tensor(targets), 1e-4)
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def is_rate(value) -> bool:
  return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_cpu_tiny_suite_fills_every_row(tmp_path):
  out = tmp_path / 'out'
  command = [
      sys.executable,
      os.path.join(BENCH, 'gpu_suite.py'),
      '--preset=cpu_tiny',
      f'--out={out}',
      '--sweep=2',  # PPA's batch (the preset's) alone: one compile per mode
      '--max_batch_cap=2',  # and one remat probe per search; the doubling is tested above
      '--best_of=1',
      '--peak_tflops=fp32=0.1,tf32=0.1,bf16=0.1',  # MFU on a CPU too
      '--train_steps=1',
      '--budget_s=3000',  # a loaded CI machine must not skip anything for time
  ]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / 'gpu_suite.json') as f:
    record = json.load(f)
  rows = {(row['part'], row['case'], str(row['batch'])): row for row in record['rows']}

  attack = [rows[('attack', mode, '2')] for mode in ('fp32-highest', 'tf32', 'bf16')]
  for row in attack:
    assert is_rate(row['jax']) and is_rate(row['mfu']), row
    assert row['peak_bytes'] is None, row  # jax has no memory statistics on CPU
  for mode in ('fp32-highest', 'tf32', 'bf16'):
    (timed,) = record['parts'][f'attack:{mode}']['rows']
    assert 0.5 < timed['flops_per_image_step'] / timed['flops_per_image_step_traced'] < 2, timed
  train = rows[('train', 'resnet18', '2')]
  assert is_rate(train['jax']), train
  for row in attack + [train]:
    if is_rate(row['torch']):
      assert is_rate(row['ratio']), row
    else:
      assert row['torch'].startswith('n/a (') and row['ratio'] == '–', row
  searches = [row for row in record['rows'] if row['part'] == 'attack max batch']
  assert sorted(row['case'] for row in searches) == sorted(
      f'{what}, {remat}' for what in ('fp32 & tf32 (f32 buffers)', 'bf16 generator') for remat in ('no remat', 'remat')
  )
  assert all(row['batch'] == '>= 2 (cap)' for row in searches), searches
  assert len(record['rows']) == len(attack) + len(searches) + 1

  table = result.stdout[result.stdout.index('gpu_suite, preset cpu_tiny') :]
  parts = [line.split('  ')[0] for line in table.splitlines()]
  counts = {name: parts.count(name) for name in ('attack', 'attack max batch', 'train')}
  assert 'JAX/PyTorch' in table and counts == {'attack': 3, 'attack max batch': 4, 'train': 1}
  assert (out / 'gpu_suite.md').read_text().count('\n| ') == len(record['rows']) + 1
  if not os.environ.get('STYLEGAN2_ADA_PYTORCH'):
    assert all(row['torch'] == 'n/a (no StyleGAN2-ADA checkout: --stylegan2_ada)' for row in attack)
