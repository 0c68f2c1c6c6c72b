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
    intervals: dict[str, list] | None = None,
):
  """One group of bars per entry of `groups`, one bar per series (NaN bars are left out); `intervals` gives
  a series' (low, high) per group, drawn as error bars."""
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) / 3), 3.6), dpi=120)
  width = 0.8 / max(1, len(series))
  x = np.arange(len(groups))
  for i, (name, values) in enumerate(series.items()):
    values = np.asarray(values, float)
    ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    if intervals and name in intervals:
      ax.errorbar(
          x + (i - (len(series) - 1) / 2) * width,
          values,
          yerr=_error_bars(values, intervals[name], positive=log_scale),
          fmt='none',
          ecolor='0.2',
          capsize=3,
          linewidth=1,
      )
  if len(groups) > 6:  # long lists: slanted labels that do not overlap
    ax.set_xticks(x, groups, rotation=35, ha='right', fontsize=8)
  else:
    ax.set_xticks(x, groups)
  if log_scale:
    ax.set_yscale('log')
  return _finish(fig, ax, path, title, ylabel, note, note_height=0.08)


def _error_bars(values: np.ndarray, intervals, positive: bool = False) -> np.ndarray:
  """[2, n] distances from each value down to its interval's low end and up to its high end (0 where unknown);
  `positive` (a log axis) stops the lower bar short of 0."""
  bounds = np.array([iv if iv is not None else (np.nan, np.nan) for iv in intervals], float).reshape(-1, 2)
  bars = np.nan_to_num(np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values])))
  if positive:
    bars[0] = np.minimum(bars[0], 0.99 * np.nan_to_num(values))
  return bars


def sweep_lines(
    path: str,
    x: list[float],
    series: dict[str, tuple[list[float], list]],
    title: str,
    xlabel: str,
    ylabel: str,
    integer_x: bool = False,
    note: str = '',
):
  """One line per series against the swept value `x`; each series is (values, (low, high) per point)."""
  fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=120)
  for name, (values, intervals) in series.items():
    values = np.asarray(values, float)
    ax.errorbar(x, values, yerr=_error_bars(values, intervals), marker='o', capsize=3, label=name)
  if integer_x:
    ax.set_xticks(x)
  ax.set_xlabel(xlabel)
  return _finish(fig, ax, path, title, ylabel, note, note_height=0.06)


def _finish(fig, ax, path: str, title: str, ylabel: str, note: str, note_height: float) -> str:
  """Title, y label, legend and the grey note under the axes; writes the PNG to `path` and closes the figure."""
  ax.set_title(title)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=8)
  if note:
    fig.text(0.01, 0.01, note, fontsize=7, color='0.35')
  fig.tight_layout(rect=(0, note_height if note else 0, 1, 1))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path
