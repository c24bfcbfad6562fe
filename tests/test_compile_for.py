"""compile_for: the real steps (v1, v2, fine-tuning) compiled for a described TPU v5e:2x2 with
data x fsdp = 2 x 2 on this CPU host (libtpu), and the pieces of its report.

One compile per step kind (module fixtures). The parameters and optimizer state must shard over
fsdp as the logical axis rules say: per chip ~1/fsdp of the total; a rule that stopped sharding
(e.g. ('embed', 'fsdp') removed) makes them whole on every chip and fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from configs import finetune as finetune_configs
from configs import pretrain as pretrain_configs
from data2vec_jax import compile_for
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.speed import hlo_collectives, tpu_topology

TOPOLOGY = "v5e:2x2"
FSDP = 2


def _libtpu():
  pytest.importorskip("libtpu", reason="compiling for TPU needs libtpu (pip install '.[tpu]')")


def _pretrain_config(recipe: str, data: int = 2):
  c = pretrain_configs.get_config(f"model=tiny,recipe={recipe}")
  c.model.vocab_size = 1000
  c.data.tokens_per_sample = 64
  c.data.global_batch_size = 8
  c.execution.scan_unroll = 1
  c.mesh.update(data=data, fsdp=FSDP)
  return c


def _compile(config, **kwargs):
  return compile_for.run(config, TOPOLOGY, log=lambda line: None, **kwargs)


@pytest.fixture(scope="module")
def v1_report(tmp_path_factory):
  _libtpu()
  out = tmp_path_factory.mktemp("v1")
  # Two slices (the data axis spans them over DCN): 2 x 4 chips, data = 2 per slice x 2.
  return _compile(_pretrain_config("release", data=4), out=str(out), slices=2), out


@pytest.fixture(scope="module")
def v2_report():
  _libtpu()
  return _compile(_pretrain_config("data2vec2"))


@pytest.fixture(scope="module")
def finetune_report():
  _libtpu()
  c = finetune_configs.get_config("task=rte")
  c.mesh.update(data=2, fsdp=FSDP)
  return _compile(c, global_batch=8, vocab_size=1000, finetune_model="tiny", finetune_seq_len=64)


def _check_sharded_over_fsdp(report):
  """Parameters and optimizer state: 1/fsdp of the unsharded bytes per chip (every tiny dim that
  carries 'embed' divides by 2); the weights are all-gathered over fsdp for use."""
  memory, whole = report["memory_per_chip"], report["state_bytes_unsharded"]
  for part in ("parameters", "optimizer_state"):
    assert memory[part] == pytest.approx(whole[part] / FSDP, rel=0.05), part
  kinds = {(row["kind"], tuple(row["axes"])) for row in report["collectives"]}
  assert ("all-gather", ("fsdp",)) in kinds, kinds


def _check_consistent(report, chips=4):
  m, e = report["memory_per_chip"], report["roofline_estimate"]
  assert report["compiled"] and report["chips"] == chips and report["mesh"]["fsdp"] == FSDP
  # The arguments hold the state and the batch (TPU layouts may pad them, never shrink them).
  parts = m["parameters"] + m["optimizer_state"] + m["ema"] + m["batch"]
  assert m["arguments"] >= parts
  assert m["total"] == m["arguments"] + m["temp"] + m["output"] - m["alias"] + m["code"]
  assert m["fits"] == (m["total"] <= m["hbm"]) and m["hbm"] == 16 * 2**30
  assert m["alias"] > 0  # the state is donated: its outputs reuse the inputs' buffers
  assert e["step_s"] == pytest.approx(
    max(e["compute_s"], e["hbm_s"]) + e["ici_s"] + e["dcn_s"], rel=1e-9
  )
  assert e["estimated_mfu"] == pytest.approx(e["compute_s"] / e["step_s"], rel=1e-9)
  assert e["compute_s"] == pytest.approx(e["flops_per_chip"] / 197e12, rel=1e-9)
  flops = report["step"]["flops_per_token"] * report["global_batch"] * report["step"]["seq_len"]
  assert e["flops_per_chip"] == pytest.approx(flops / chips, rel=1e-9)
  assert e["ici_bytes"] == pytest.approx(sum(r["traffic_bytes"] for r in report["collectives"]))
  if report["slices"] == 1:
    assert e["dcn_s"] == 0.0
  else:  # the gradients' all-reduce over data crosses the slices
    assert e["dcn_bytes"] > 0 and e["dcn_s"] == pytest.approx(e["dcn_bytes"] / 3.125e9)
    assert any(r["kind"] == "all-reduce" and "data" in r["axes"] for r in report["collectives"])


def test_v1_step_compiles_sharded_for_two_slices_and_writes_its_report(v1_report):
  report, out = v1_report
  _check_consistent(report, chips=8)
  assert report["mesh"] == {"data": 4, "fsdp": FSDP, "tensor": 1, "slices": 2}
  _check_sharded_over_fsdp(report)
  assert report["step"]["objective"] == "data2vec" and report["memory_per_chip"]["ema"] > 0
  # The embedding gradient scatters into each chip's slice of the table: no [B, T, D] tensor
  # (8 x 64 x 64 float32) is all-gathered over every batch-sharding chip, as XLA did before the
  # lookup's sharding constraint. (Over data alone: the two-slice gradient all-reduce's parts.)
  everywhere = [
    r
    for r in report["collectives"]
    if r["kind"] == "all-gather" and {"data", "fsdp"} <= set(r["axes"])
  ]
  assert sum(r["bytes"] for r in everywhere) < 8 * 64 * 64 * 4 / 8, everywhere
  written = (out / "report.json").read_text()
  assert '"compiled": true' in written
  hlo = (out / "step.hlo.txt").read_text()
  assert hlo.startswith("HloModule") and "all-gather" in hlo


def test_v2_step_compiles_sharded(v2_report):
  _check_consistent(v2_report)
  _check_sharded_over_fsdp(v2_report)
  assert v2_report["step"]["objective"] == "data2vec2"


def test_finetune_step_compiles_sharded(finetune_report):
  _check_consistent(finetune_report)
  _check_sharded_over_fsdp(finetune_report)
  assert finetune_report["step"]["kind"] == "finetune"
  assert finetune_report["memory_per_chip"]["ema"] == 0


def test_multi_slice_mesh_puts_the_slices_on_the_data_axis():
  _libtpu()
  topology = tpu_topology.parse_topology(TOPOLOGY, slices=2)
  devices = tpu_topology.topology_devices(topology)
  mesh = sharding_lib.make_mesh(data=4, fsdp=2, slices=2, devices=devices)
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  # The outer half of the data axis is one slice, the inner the other: fsdp never crosses DCN.
  assert (slice_of[:2] == slice_of[0, 0, 0]).all() and (slice_of[2:] != slice_of[0, 0, 0]).all()
  with pytest.raises(ValueError, match="multiple of mesh.slices"):
    sharding_lib.make_mesh(data=1, fsdp=8, slices=2, devices=devices)


def test_mesh_slices_need_multi_slice_devices():
  with pytest.raises(ValueError, match="set mesh.slices=1"):
    sharding_lib.make_mesh(data=8, slices=2)


@pytest.mark.parametrize(
  "name,grid,chips",
  [
    ("v5e-256", (16, 16), 256),
    ("v6e-256", (16, 16), 256),
    ("v5p-128", (4, 4, 4), 64),  # Cloud TPU counts v5p TensorCores: 2 per chip
    ("v5e:2x2", (2, 2), 4),
    ("v5e-8", (2, 4), 8),
  ],
)
def test_topology_names(name, grid, chips):
  topology = tpu_topology.parse_topology(name)
  assert topology.grid == grid and topology.chips == chips
  if "-" in name:
    assert topology.describe() == name


def test_unknown_topology_is_one_clear_error():
  with pytest.raises(ValueError, match="unknown topology 'v9x-8'"):
    tpu_topology.parse_topology("v9x-8")


def test_collectives_read_every_replica_group_spelling():
  # mesh data=2 x fsdp=2 x tensor=1: flat ids 0..3, fsdp varies fastest.
  shape, names = (2, 2, 1), ("data", "fsdp", "tensor")
  hlo = "\n".join(
    [
      "ENTRY %main (p: f32[8]) -> f32[8] {",
      # TPU mesh form: ids laid out [2,2] transposed, grouped along axis_0 -> {0,1},{2,3}.
      "  %a = f32[64,32]{1,0} all-gather(%p), channel_id=1, replica_groups=mesh['axis_0'=2,"
      "'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_0'}, dimensions={1}",
      "  %b = (f32[16]{0}, bf16[8]{0}) all-reduce(%p, %q), replica_groups={{0,2},{1,3}}",
      "  %c = f32[4]{0} reduce-scatter(%p), replica_groups=[1,4]<=[4], dimensions={0}",
      "  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body, "
      'backend_config={"known_trip_count":{"n":"3"}}',
      "}",
      "%body (x: f32[8]) -> f32[8] {",
      "  %d = f32[8]{0} all-reduce(%x), replica_groups={{0,1},{2,3}}",
      "}",
    ]
  )
  ops = hlo_collectives.collectives(hlo, shape, names)
  by_name = {(op.kind, op.axes): op for op in ops}
  gather = by_name[("all-gather", ("fsdp",))]
  assert gather.bytes == 64 * 32 * 4 and gather.group_size == 2 and gather.count == 1
  reduce = by_name[("all-reduce", ("data",))]
  assert reduce.bytes == 16 * 4 + 8 * 2 and reduce.traffic_bytes == reduce.bytes  # 2(n-1)/n = 1
  scatter = by_name[("reduce-scatter", ("data", "fsdp"))]
  assert scatter.bytes == 4 * 4 * 4 and scatter.traffic_bytes == 0.75 * scatter.bytes
  looped = by_name[("all-reduce", ("fsdp",))]
  assert looped.count == 3  # in the while body: the known trip count


def test_batch_search_finds_the_largest_fitting_multiple():
  hbm = 1000.0

  def memory(batch):  # affine in the batch, like a step's activations
    return 200 + 7 * batch

  calls = []

  def fits_at(batch):
    calls.append(batch)
    return memory(batch) <= hbm, memory(batch)

  result = compile_for.search_largest_batch(fits_at, 16, fits_at(16), 8, hbm, compiles=3)
  assert result["largest_fitting"] == 112 and result["smallest_not_fitting"] in (120, None)
  assert len(calls) <= 4
  # The one-compile estimate: temporaries in proportion to the batch, the rest fixed.
  stats = {"total": 100 + 7 * 16, "temp": 7 * 16, "hbm": hbm}
  assert compile_for.linear_largest_batch(stats, 16, 8) == 128  # (1000 - 100) / 7 = 128.6
  assert compile_for.linear_largest_batch({**stats, "temp": 0}, 16, 8) is None
