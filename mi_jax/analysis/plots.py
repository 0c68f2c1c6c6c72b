"""matplotlib figures of the study, written as PNG (Agg backend: no display needed)."""

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def grouped_bars(
    path: str,
    groups: list[str],
    series: dict[str, list[float]],
    title: str,
    ylabel: str,
    log_scale: bool = False,
    note: str = '',
):
  """One group of bars per entry of `groups`, one bar per series (NaN bars are left out)."""
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) / 3), 3.6), dpi=120)
  width = 0.8 / max(1, len(series))
  x = np.arange(len(groups))
  for i, (name, values) in enumerate(series.items()):
    ax.bar(x + (i - (len(series) - 1) / 2) * width, np.asarray(values, float), width, label=name)
  if len(groups) > 6:  # long lists: slanted labels that do not overlap
    ax.set_xticks(x, groups, rotation=35, ha='right', fontsize=8)
  else:
    ax.set_xticks(x, groups)
  ax.set_title(title)
  ax.set_ylabel(ylabel)
  if log_scale:
    ax.set_yscale('log')
  ax.legend(fontsize=8)
  if note:
    fig.text(0.01, 0.01, note, fontsize=7, color='0.35')
  fig.tight_layout(rect=(0, 0.08 if note else 0, 1, 1))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path
