"""Move trained weights between two module definitions (TTS: skip model -> no-skip model).

For additive skips (ResNet) the trees are identical and everything is copied.
Where they differ (a learnable skip scale, DenseNet's truncated concatenations),
every target leaf that is missing from the source or has another shape must be
named by a `reinit` pattern (it keeps its fresh initialisation), and every
source leaf with no place in the target by a `drop` pattern; otherwise
TransplantError lists them all.
"""

import dataclasses
import re
from typing import Sequence

from flax import traverse_util
import numpy as np

from mi_jax import errors


class TransplantError(errors.MiJaxError, ValueError):
  pass


@dataclasses.dataclass
class TransplantReport:
  copied: list[str]
  reinitialised: list[str]  # target paths kept at their fresh init (missing or other shape in source)
  dropped: list[str]  # source paths with no place in the target

  def summary(self) -> str:
    lines = [f'copied {len(self.copied)} leaves']
    if self.reinitialised:
      lines.append(f're-initialised {len(self.reinitialised)}: {", ".join(self.reinitialised)}')
    if self.dropped:
      lines.append(f'dropped {len(self.dropped)}: {", ".join(self.dropped)}')
    return '; '.join(lines)


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep='/')


def transplant(source, target, reinit: Sequence[str] = (), drop: Sequence[str] = (), keep_fresh: Sequence[str] = ()):
  """Returns (target tree filled from source, TransplantReport).

  `source` and `target` are variable trees ({'params': ..., 'batch_stats': ...}
  or any nested dict); `target` is a freshly initialised tree of the second model.
  Target leaves matching a `keep_fresh` pattern keep their initialisation even where the source has them
  (TL-DMI's head: the public classes are not the private ones, whatever their count).
  """
  src, dst = _flat(source), _flat(target)
  matches = lambda path, patterns: any(re.search(p, path) for p in patterns)
  copied, reinitialised, problems = [], [], []
  out = {}
  for path, fresh in dst.items():
    have = None if matches(path, keep_fresh) else src.get(path)
    if have is not None and np.shape(have) == np.shape(fresh):
      out[path] = np.asarray(have, dtype=np.asarray(fresh).dtype) if hasattr(fresh, 'dtype') else have
      copied.append(path)
      continue
    why = 'missing in source' if have is None else f'source {np.shape(have)} vs target {np.shape(fresh)}'
    if matches(path, reinit) or matches(path, keep_fresh):
      out[path] = fresh
      reinitialised.append(path)
    else:
      problems.append(f'  {path}: {why}')
  dropped = sorted(set(src) - set(dst))
  problems += [f'  {p}: not in the target model' for p in dropped if not matches(p, drop)]
  if problems:
    raise TransplantError(
        'cannot transplant these leaves (name them in reinit= / drop= to allow it):\n' + '\n'.join(problems)
    )
  return traverse_util.unflatten_dict(out, sep='/'), TransplantReport(copied, reinitialised, dropped)
