"""Device mesh and batch placement: one 'data' axis, batches split over it, params replicated."""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D 'data' mesh over the first `num_devices` devices (0 = all, on every host).

  Auto axis type: jit + NamedSharding in the classic GSPMD style (`jax.make_mesh`
  would default to Explicit axes in jax 0.10, where with_sharding_constraint then refuses P('data')).
  """
  devices = jax.devices()
  if num_devices:
    if jax.process_count() > 1:
      raise ValueError('config.num_devices must be 0 (all devices) in a multi-process run')
    if num_devices > len(devices):
      raise ValueError(f'config.num_devices={num_devices}, but only {len(devices)} devices are visible')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def shard_batch(batch, mesh: Mesh):
  """This process's numpy batch -> global jax.Arrays split over the 'data' axis."""
  sharding = data_sharded(mesh)
  num_shards = mesh.devices.size

  def put(x):
    global_rows = x.shape[0] * jax.process_count()
    if global_rows % num_shards:
      raise ValueError(f'global batch of {global_rows} does not split over {num_shards} devices')
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)
