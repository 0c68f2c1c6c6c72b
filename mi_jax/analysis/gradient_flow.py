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


def stage_gradient_norms(attack_workdir: str) -> dict[str, float]:
  """{stage input name: mean over steps and batches of the batch-mean ||dL/dz_i||}."""
  sums = {}
  for batch in attack_outputs.batch_logs(attack_workdir):
    for key, values in batch.items():
      if key.startswith(attack_outputs.GRAD_NORM_PREFIX):
        sums.setdefault(key[len(attack_outputs.GRAD_NORM_PREFIX) :], []).append(np.mean(values))
  # 'perturbations/stage3_input' or 'stage3_input' -> ordered by stage number
  names = sorted(sums, key=lambda n: int(''.join(ch for ch in n.split('/')[-1] if ch.isdigit()) or 0))
  return {name.split('/')[-1]: float(np.mean(sums[name])) for name in names}


def plot_gradient_flow(path: str, architecture: str, norms_by_defense: dict[str, dict[str, float]]):
  """Bars per stage input, one series per defense (log scale)."""
  stages = list(next(iter(norms_by_defense.values())))
  series = {d: [norms.get(s, np.nan) for s in stages] for d, norms in norms_by_defense.items()}
  return plots.grouped_bars(
      path,
      [s.replace('_input', '') for s in stages],
      series,
      f'{architecture}: gradient reaching each stage during inversion',
      'mean ||dL/dz|| at stage input',
      log_scale=True,
  )
