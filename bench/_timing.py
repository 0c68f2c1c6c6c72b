"""The timing loop every benchmark here shares: warm up, then interleave the variants and keep each one's best."""

import time
from typing import Callable


def best_rates(runs: dict[str, Callable[[int], None]], calls: int, repeats: int, units_per_call: float) -> dict:
  """Best units/s of each `run(n)` (n calls, blocking until done) over `repeats` interleaved rounds.

  Each variant is warmed up (compiled) with one call first; interleaving makes machine load hit all alike.
  """
  for run in runs.values():
    run(1)
  best = {name: 0.0 for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run(calls)
      best[name] = max(best[name], calls * units_per_call / (time.perf_counter() - start))
  return best
