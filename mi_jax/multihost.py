"""Multi-process start-up and the one-process-does-it steps of a multi-process job.

A job spans several processes when a cluster launcher starts one per host (SLURM's srun, Open MPI's
mpirun) or when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set by hand.
Work that must happen once (preparing a data set) runs on one process while the others wait at a
barrier of JAX's coordination service: a barrier, not a collective, so a wait of hours does not time
out the collectives' start-up.
"""

import itertools
import math
import os
import socket

from absl import logging
import jax
from orbax.checkpoint import multihost as orbax_multihost

from mi_jax import errors

# Environment variables by which cluster launchers announce a multi-process job.
_MULTI_PROCESS_ENV = (
    'JAX_COORDINATOR_ADDRESS',
    'JAX_NUM_PROCESSES',
    'SLURM_NTASKS',
    'OMPI_COMM_WORLD_SIZE',
    'PMI_SIZE',
)

# How long the other processes wait for one to finish a step such as preparing a data set.
ONE_PROCESS_TIMEOUT_S = 24 * 3600


def is_multi_process_env(environ=os.environ) -> bool:
  """True when a launcher started several processes (SLURM, Open MPI, PMI) or named a coordinator."""
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for name in _MULTI_PROCESS_ENV[1:]:
    try:
      if int(environ.get(name, '1')) > 1:
        return True
    except ValueError:
      pass
  return False


def distributed_arguments(environ=os.environ) -> dict:
  """The jax.distributed.initialize arguments that JAX_NUM_PROCESSES and JAX_PROCESS_ID give.

  jax reads JAX_COORDINATOR_ADDRESS itself but not these two (jax 0.10); whatever is left unset here
  JAX detects from SLURM or Open MPI.
  """
  arguments = {}
  for name, key in (('JAX_NUM_PROCESSES', 'num_processes'), ('JAX_PROCESS_ID', 'process_id')):
    value = environ.get(name, '').strip()
    if value:
      if not value.isdigit():
        raise ValueError(f'environment variable {name}={value!r}: expected a non-negative integer')
      arguments[key] = int(value)
  if arguments.get('process_id', -1) >= arguments.get('num_processes', math.inf):
    raise ValueError(
        f'environment variable JAX_PROCESS_ID={arguments["process_id"]} must be below '
        f'JAX_NUM_PROCESSES={arguments["num_processes"]}'
    )
  return arguments


def initialize(environ=os.environ):
  """Joins the multi-process job a launcher (SLURM, Open MPI) or the JAX_* variables describe; no-op alone."""
  if not is_multi_process_env(environ):
    return
  arguments = distributed_arguments(environ)
  try:
    jax.distributed.initialize(**arguments)
  except ValueError as e:
    raise ValueError(
        f'multi-process start-up: {e} Set JAX_COORDINATOR_ADDRESS (host:port of process 0), '
        'JAX_NUM_PROCESSES and JAX_PROCESS_ID, or start the job with srun (SLURM) or mpirun (Open MPI).'
    ) from None
  logging.info('Process %d of %d', jax.process_index(), jax.process_count())


def _client():
  return orbax_multihost.get_jax_distributed_client()


def _doers(per_host: bool) -> list[int]:
  """The processes that do a once-only step: process 0, or the lowest process of every host."""
  if not per_host:
    return [0]
  client, me = _client(), jax.process_index()
  client.key_value_set(f'mi_jax/hostname/{me}', socket.gethostname(), allow_overwrite=True)
  hosts = [
      client.blocking_key_value_get(f'mi_jax/hostname/{i}', ONE_PROCESS_TIMEOUT_S * 1000)
      for i in range(jax.process_count())
  ]
  return sorted({hosts.index(h) for h in hosts})


_run_once_calls = itertools.count()


class OtherProcessError(errors.MiJaxError, RuntimeError):
  """A once-only step failed on the process that did it."""


def run_once(name: str, fn, per_host: bool = False):
  """fn() on one process (per host with `per_host`: host-local disks) while the others wait; then returns.

  The others return None after the step is done; when it fails, they raise OtherProcessError with
  its message, so no process waits for a step that will not finish. `name` says what the step does.
  """
  if jax.process_count() == 1:
    return fn()
  key = f'mi_jax/{next(_run_once_calls)}/{name}'  # barriers are single-use; every process counts the same calls
  client, me = _client(), jax.process_index()
  doers = _doers(per_host)
  result, error = None, None
  if me in doers:
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-exception-caught  (reported to the waiting processes)
      error = e
    client.key_value_set(f'{key}/{me}', '' if error is None else f'{type(error).__name__}: {error}')
  else:
    logging.info('Process %d waits for process(es) %s to %s', me, doers, name)
  client.wait_at_barrier(key, ONE_PROCESS_TIMEOUT_S * 1000)
  if error is not None:
    raise error
  for doer in doers:
    message = client.blocking_key_value_get(f'{key}/{doer}', ONE_PROCESS_TIMEOUT_S * 1000)
    if message:
      raise OtherProcessError(f'process {doer} failed to {name}: {message}')
  return result
