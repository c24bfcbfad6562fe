"""The collectives of a compiled (optimized, SPMD-partitioned) XLA program, read from its HLO text.

`collectives(hlo_text, mesh_shape, axis_names)` lists every all-reduce, all-gather,
reduce-scatter, all-to-all and collective-permute with its per-chip bytes, how often it runs per
call (ops in a while loop's body count its known trip count), and the mesh axes its replica groups
span: each group's devices, found in the mesh's device grid, differ along exactly those axes.

Replica groups come in three spellings: explicit (`{{0,1},{2,3}}`), iota (`[2,2]<=[4]`,
`[2,2]<=[2,2]T(1,0)`) and the TPU compiler's mesh form
(`mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_0'}`: the device ids laid out on
an internal mesh, grouped along the named internal axes). Ids are the program's logical device
ids: the position in `jax.sharding.Mesh.devices.flat` for a jitted function over that mesh.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Sequence

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
}
_OP = re.compile(
  r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<shape>.+?)\s+(?P<kind>"
  + "|".join(KINDS)
  + r")(?:-start)?\((?P<rest>.*)$"
)
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_ARRAY_TEXT = re.compile(r"[a-z][a-z0-9]*\[[0-9,]*\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective op of the program.

  kind: 'all-gather', ...; bytes: per chip, the larger of its input and output (the gathered
  or reduced array, bytes of all tuple elements); group_size: devices per replica group;
  axes: mesh axes the groups span (() for a group of one); count: executions per call.
  """

  kind: str
  bytes: int
  group_size: int
  axes: tuple[str, ...]
  count: int

  @property
  def traffic_bytes(self) -> float:
    """Bytes each chip sends over the links per execution, for bandwidth-optimal algorithms:
    all-reduce 2(n-1)/n, all-gather / reduce-scatter / all-to-all (n-1)/n of the full array,
    collective-permute the whole buffer."""
    n = self.group_size
    if n <= 1:
      return 0.0
    if self.kind == "all-reduce":
      return 2.0 * (n - 1) / n * self.bytes
    if self.kind == "collective-permute":
      return float(self.bytes)
    return (n - 1) / n * self.bytes


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape: 'f32[64,256]{1,0}' or a tuple '(f32[2], bf16[3,4])'."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in _DTYPE_BYTES:
      continue
    total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _iota(spec: str) -> np.ndarray:
  """'[2,2]<=[4]' / '[2,2]<=[2,2]T(1,0)' -> the device id array, or a device_ids spec
  '[2,2]T(1,0)' (no reshape target) -> flat ids."""
  match = re.fullmatch(r"(?:\[([0-9,]+)\]<=)?\[([0-9,]+)\](?:T\(([0-9,]+)\))?", spec.strip())
  if not match:
    raise ValueError(f"unparsed iota {spec!r}")
  target, source, perm = match.groups()
  source_dims = [int(x) for x in source.split(",")]
  ids = np.arange(math.prod(source_dims)).reshape(source_dims)
  if perm:
    ids = ids.transpose([int(x) for x in perm.split(",")])
  return ids.reshape([int(x) for x in target.split(",")]) if target else ids.reshape(-1)


def replica_groups(text: str) -> list[list[int]] | None:
  """The replica groups of one op's attribute text, or None when it has none."""
  mesh_form = re.search(
    r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\((\[[^\]]*\](?:T\([0-9,]*\))?)\))?\s*\{([^}]*)\}",
    text,
  )
  if mesh_form:
    sizes_text, ids_text, axes_text = mesh_form.groups()
    names = re.findall(r"'([^']+)'=(\d+)", sizes_text)
    sizes = [int(s) for _, s in names]
    ids = _iota(ids_text) if ids_text else np.arange(math.prod(sizes))
    ids = ids.reshape(sizes)
    grouped = [i for i, (name, _) in enumerate(names) if f"'{name}'" in axes_text]
    kept = [i for i in range(len(sizes)) if i not in grouped]
    grid = ids.transpose(kept + grouped).reshape(-1, math.prod(sizes[i] for i in grouped))
    return grid.tolist()
  iota = re.search(r"replica_groups=(\[[0-9,]+\]<=\[[0-9,]+\](?:T\([0-9,]+\))?)", text)
  if iota:
    return _iota(iota.group(1)).tolist()
  explicit = re.search(r"replica_groups=\{((?:\{[0-9,]*\},?)*)\}", text)
  if explicit:
    return [
      [int(x) for x in g.split(",") if x] for g in re.findall(r"\{([0-9,]*)\}", explicit.group(1))
    ]
  pairs = re.search(r"source_target_pairs=\{((?:\{[0-9]+,[0-9]+\},?)*)\}", text)
  if pairs:
    return [[int(a), int(b)] for a, b in re.findall(r"\{([0-9]+),([0-9]+)\}", pairs.group(1))]
  return None


def group_axes(
  groups: list[list[int]], mesh_shape: Sequence[int], axis_names: Sequence[str]
) -> tuple[str, ...]:
  """The mesh axes along which the devices of the groups differ (ids = flat mesh positions)."""
  varying: set[int] = set()
  for group in groups:
    coords = np.array(np.unravel_index(np.asarray(group), tuple(mesh_shape))).T  # [n, axes]
    varying |= {int(a) for a in np.flatnonzero((coords != coords[0]).any(axis=0))}
  return tuple(axis_names[a] for a in sorted(varying))


def _multiplicities(lines: list[str]) -> dict[str, int]:
  """computation name -> executions per call of the entry: a while body runs its known trip
  count times per execution of its caller (1 where XLA knows none); other calls once."""
  calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  entry, current = None, None
  for line in lines:
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
    body = re.search(r"\bbody=%([\w.\-]+)", line)
    for callee in re.findall(
      r"(?:calls|to_apply|body|condition|branch_computations|true_computation|"
      r"false_computation)=\{?%([\w.\-]+)",
      line,
    ):
      repeat = int(trips.group(1)) if trips and body and callee == body.group(1) else 1
      calls[current].append((callee, repeat))
    for extra in re.findall(r"branch_computations=\{([^}]*)\}", line):
      calls[current] += [(c, 1) for c in re.findall(r"%([\w.\-]+)", extra)]
  counts: dict[str, int] = collections.defaultdict(int)

  def visit(name: str, times: int, depth: int = 0) -> None:
    if depth > 64:
      return
    counts[name] += times
    for callee, repeat in calls.get(name, ()):
      visit(callee, times * repeat, depth + 1)

  if entry is not None:
    visit(entry, 1)
  return counts


def collectives(
  hlo_text: str, mesh_shape: Sequence[int], axis_names: Sequence[str]
) -> list[Collective]:
  """Every collective of the program (async start ops counted once, their done ops not)."""
  lines = hlo_text.splitlines()
  times = _multiplicities(lines)
  found = []
  current = None
  for line in lines:
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      continue
    match = _OP.match(line)
    if not match:
      continue
    kind = match.group("kind")
    shape = match.group("shape")
    groups = replica_groups(match.group("rest")) or [[0]]
    group_size = max(len(g) for g in groups)
    if kind in ("all-reduce", "collective-permute") or not shape.startswith("("):
      size = shape_bytes(shape)  # every operand of a variadic op (a tuple result) counts
    else:
      # An async start's tuple holds the input and the output: the larger is the full array.
      size = max(shape_bytes(s) for s in _ARRAY_TEXT.findall(shape))
    if kind == "reduce-scatter" and not shape.startswith("("):
      size *= group_size  # the shape is the scattered output: the full array is n times it
    axes = group_axes(groups, mesh_shape, axis_names) if group_size > 1 else ()
    found.append(Collective(kind, size, group_size, axes, max(1, times.get(current, 1))))
  return found


def summarize(ops: list[Collective]) -> list[dict]:
  """Per (kind, axes): count per step, total bytes and link traffic per chip per step."""
  table: dict[tuple[str, tuple[str, ...]], dict] = {}
  for op in ops:
    row = table.setdefault(
      (op.kind, op.axes),
      {"kind": op.kind, "axes": list(op.axes), "count": 0, "bytes": 0, "traffic_bytes": 0.0},
    )
    row["count"] += op.count
    row["bytes"] += op.bytes * op.count
    row["traffic_bytes"] += op.traffic_bytes * op.count
  return sorted(table.values(), key=lambda r: -r["traffic_bytes"])
