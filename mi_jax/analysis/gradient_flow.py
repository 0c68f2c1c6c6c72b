"""Per-stage gradient flow during inversion, read from an attack workdir.

The attack records, at every optimisation step of every batch, the batch-mean norm of
dL/dz_i at each stage input z_i (optimize.make_optimize_fn; `grad_norm/<stage>` in
`optimized/batch_<i>.npz`, read through mi_jax/attack_outputs.py). With z_{i+1} = g_i(z_i) + k z_i the identity term k I carries
gradient past g_i; removing the last stage's skips (k = 0) shrinks it at every earlier stage
(Koh et al., ECCV 2024, Section 3: dL/dz_i = dL/dz_{i+1} (dg_i/dz_i + k I)).
"""

import numpy as np

from mi_jax import attack_outputs
from mi_jax.analysis import plots
from mi_jax.metrics import scores


def _per_batch_norms(attack_workdir: str) -> dict[str, list[float]]:
  """{stage input name: per batch, the mean over its steps of the batch-mean ||dL/dz_i||}, by stage."""
  per_batch = {}
  for batch in attack_outputs.batch_logs(attack_workdir):
    for key, values in batch.items():
      if key.startswith(attack_outputs.GRAD_NORM_PREFIX):
        per_batch.setdefault(key[len(attack_outputs.GRAD_NORM_PREFIX) :], []).append(float(np.mean(values)))
  # 'perturbations/stage3_input' or 'stage3_input' -> ordered by stage number
  names = sorted(per_batch, key=lambda n: int(''.join(ch for ch in n.split('/')[-1] if ch.isdigit()) or 0))
  return {name.split('/')[-1]: per_batch[name] for name in names}


def stage_gradient_norms(attack_workdir: str) -> dict[str, float]:
  """{stage input name: mean over steps and batches of the batch-mean ||dL/dz_i||}."""
  return {name: float(np.mean(values)) for name, values in _per_batch_norms(attack_workdir).items()}


def stage_gradient_intervals(attack_workdir: str) -> dict[str, tuple[float, float]]:
  """{stage input name: the 95% Student-t interval of that mean over the attack's batches} (NaN for one)."""
  return {name: scores.t_interval(values) for name, values in _per_batch_norms(attack_workdir).items()}


def plot_gradient_flow(
    path: str,
    architecture: str,
    norms_by_defense: dict[str, dict[str, float]],
    intervals_by_defense: dict[str, dict[str, tuple[float, float]]] | None = None,
):
  """Bars per stage input, one series per defense (log scale), with 95% intervals over batches if given."""
  stages = list(next(iter(norms_by_defense.values())))
  series = {d: [norms.get(s, np.nan) for s in stages] for d, norms in norms_by_defense.items()}
  intervals = None
  if intervals_by_defense:
    intervals = {d: [ivs.get(s) for s in stages] for d, ivs in intervals_by_defense.items()}
  return plots.grouped_bars(
      path,
      [s.replace('_input', '') for s in stages],
      series,
      f'{architecture}: gradient reaching each stage during inversion',
      'mean ||dL/dz|| at stage input',
      log_scale=True,
      intervals=intervals,
      note='Error bars: 95% Student-t intervals over the attack batches.' if intervals else '',
  )
