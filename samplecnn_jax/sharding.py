"""The device mesh and how arrays are laid out on it: data parallelism over a `data` axis.

The train state is replicated on every device; batches are split along their first
dimension over the `data` axis. Because the step is one `jax.jit` over global arrays,
batch-norm statistics and gradients are computed over the global batch, so 1 device and
N devices give the same result for the same global batch. This module only builds meshes
and shardings; it runs no model code.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def create_mesh(mesh_shape: tuple[int, ...] = (-1,), axis_names: tuple[str, ...] = ("data",)) -> Mesh:
  """A mesh over all devices; -1 in `mesh_shape` takes the remaining devices."""
  shape = list(mesh_shape)
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} and mesh_axes {tuple(axis_names)} differ in length.")
  num_devices = jax.device_count()
  if shape.count(-1) > 1:
    raise ValueError(f"At most one -1 in mesh_shape, got {tuple(mesh_shape)}.")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh_shape {tuple(shape)} does not use the {num_devices} devices available.")
  auto = (jax.sharding.AxisType.Auto,) * len(shape)
  return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=auto)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over the `data` axis."""
  return NamedSharding(mesh, PartitionSpec("data"))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """The global batch must split evenly over the data axis and over the processes."""
  data = mesh.shape["data"]
  if batch_size % data or batch_size % jax.process_count():
    raise ValueError(
        f"config.{what}={batch_size} does not divide evenly over {data} devices on the 'data' "
        f"axis ({jax.process_count()} processes). Use a multiple of {data}, e.g. "
        f"--config.{what}={max(data, batch_size // data * data)}."
    )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded over `data`."""
  sharding = batch_sharded(mesh)
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
  }


def to_host(array: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host) global array, as numpy on every process."""
  if array.is_fully_addressable:
    return np.asarray(array)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
