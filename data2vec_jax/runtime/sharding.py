"""Device mesh and the logical -> mesh axis rules.

Parameters carry logical axis names from their initialisers (`nn.with_logical_partitioning` in
`data2vec_jax/model/encoder.py` / `data2vec_jax/model/heads.py`); this table is the one place that decides how those names map onto the
mesh axes `('data', 'fsdp', 'tensor')`:

* `data`   - pure data parallelism: batch split, parameters replicated.
* `fsdp`   - batch split *and* parameters / optimizer state / EMA sharded along their `embed` dim
             (ZeRO-3 style: XLA all-gathers weights per use and reduce-scatters gradients).
* `tensor` - Megatron-style tensor parallelism over attention heads, MLP width and vocabulary.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. Activations use `act_*` names so that fsdp shards weights
# without also splitting activations along the model dimension.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
  ("batch", ("data", "fsdp")),
  # The embedding lookups' output, laid out like the tables (model/encoder.py `Embeddings`).
  ("data_batch", "data"),
  ("length", None),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv", None),
  ("layers", None),
  ("act_embed", None),
  ("act_mlp", "tensor"),
  ("act_heads", "tensor"),
  ("act_kv", None),
)


@contextlib.contextmanager
def activate(mesh: Mesh) -> Iterator[Mesh]:
  """`mesh` as the current mesh, with the logical axis rules: where the model's parameter
  creation and activation constraints resolve their logical axis names."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield mesh


def make_mesh(
  data: int = -1,
  fsdp: int = 1,
  tensor: int = 1,
  slices: int = 1,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 (= all remaining devices).

  slices > 1 (a multi-slice TPU job): the `data` axis spans the slices, so only its gradient
  all-reduce crosses the slower data-center network (DCN) while fsdp and tensor stay within a
  slice on ICI; `data` must be a multiple of `slices` and the devices must carry `slice_index`.

  Axis types are Auto (the `jax.make_mesh` default is Explicit in this JAX, which logical
  constraints do not support).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(
      f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}"
    )
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into mesh {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
      f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
      f"devices, but {len(devices)} are available"
    )
  if slices > 1:
    return Mesh(
      _hybrid_grid(sizes, slices, devices), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
  if slices < 1:
    raise ValueError(f"mesh.slices must be >= 1, got {slices}")
  try:
    # Topology-aware placement on TPU/GPU (keeps `tensor` on the fastest links).
    from jax.experimental import mesh_utils

    device_grid = mesh_utils.create_device_mesh(sizes, devices=devices)
  except Exception:  # noqa: BLE001 - CPU / unusual topologies: plain row-major order is fine
    device_grid = np.asarray(devices).reshape(sizes)
  return Mesh(device_grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _hybrid_grid(sizes: list[int], slices: int, devices: Sequence[jax.Device]) -> np.ndarray:
  """[data, fsdp, tensor] devices with `data` split as slices (DCN) x data / slices (ICI)."""
  data, fsdp, tensor = sizes
  if data % slices:
    raise ValueError(
      f"mesh.data={data} must be a multiple of mesh.slices={slices}: the data axis spans "
      f"the slices (set mesh.data to slices x the data-parallel size within a slice)"
    )
  if any(getattr(d, "slice_index", None) is None for d in devices):
    raise ValueError(
      f"mesh.slices={slices} needs devices of a multi-slice TPU job (with slice_index); "
      f"these have none: set mesh.slices=1"
    )
  found = len({d.slice_index for d in devices})
  if found != slices:
    raise ValueError(f"mesh.slices={slices}, but the devices span {found} slice(s)")
  from jax.experimental import mesh_utils

  # Split physical axes where needed (data=128 on a 16x16 slice): a ring along one logical axis
  # then spans part of a torus dimension, which XLA handles.
  return mesh_utils.create_hybrid_device_mesh(
    [data // slices, fsdp, tensor], [slices, 1, 1], devices=devices, allow_split_physical_axes=True
  )


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str) -> P:
  """Drops mesh axes from dims they do not divide (jit refuses uneven shardings).

  Small or odd-sized tensors (a 3-head test model on tensor=2, a bias of width 100 on fsdp=8)
  are then replicated along that dim instead of failing; large models are unaffected.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
    size = math.prod(mesh.shape[a] for a in axes_tuple)
    if dim % size:
      logging.debug(
        "replicating dim %d of %s (size %d not divisible by %s=%d)",
        len(fitted),
        name,
        dim,
        axes_tuple,
        size,
      )
      fitted.append(None)
    else:
      fitted.append(axes)
  return P(*fitted)


def logical_to_shardings(
  abstract_boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES
) -> Any:
  """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) abstract arrays.

  Leaves without logical metadata (step counters, optimizer scalars, RNG keys) are replicated.
  The returned tree has the *unboxed* structure.
  """
  logical_specs = nn.get_partition_spec(abstract_boxed_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  unboxed = strip_boxes(abstract_boxed_tree)
  leaves, treedef = jax.tree_util.tree_flatten(unboxed)
  spec_leaves = treedef.flatten_up_to(mesh_specs)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(unboxed)[0]]
  shardings = [
    NamedSharding(mesh, _fit_spec(spec if isinstance(spec, P) else P(), leaf.shape, mesh, path))
    for leaf, spec, path in zip(leaves, spec_leaves, paths)
  ]
  return jax.tree_util.tree_unflatten(treedef, shardings)


def strip_boxes(tree: Any) -> Any:
  """Removes `nn.Partitioned` boxes without `nn.meta.unbox`'s sharding constraint (which fails on
  abstract values outside jit when a mesh is set)."""
  return jax.tree_util.tree_map(
    lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
    tree,
    is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
  )


def placed_shapes(boxed: Any, shardings: Any) -> Any:
  """The abstract state a restore or an ahead-of-time compile needs: `boxed`'s shapes and dtypes
  (boxes stripped) as `jax.ShapeDtypeStruct`s placed by `shardings` (a tree of the same
  structure)."""
  return jax.tree_util.tree_map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), strip_boxes(boxed), shardings
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of [B, T] host batches: rows split over ('data', 'fsdp')."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]
