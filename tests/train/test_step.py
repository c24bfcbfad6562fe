"""The sharded train step: same numbers on every mesh as on one device; gradient accumulation
equals one step on the larger batch; the teacher and EMA ordering of the step."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from data2vec_jax.model.config import tiny_config
from data2vec_jax.objective.ema import EMAConfig
from data2vec_jax.objective.execution import ExecutionPlan, real_tokens
from data2vec_jax.objective.loss import ObjectiveConfig
from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.optimizer import OptimizerConfig, make_optimizer
from data2vec_jax.train import state as train_state_lib
from data2vec_jax.train import step as train_step_lib

MASK_ID = 999


def make_batch(rows: int, length: int, seed: int = 0, vocab: int = 1000) -> dict[str, np.ndarray]:
  """Right-padded rows (BOS ... EOS, pads = 1) with ~30% of real tokens masked."""
  rng = np.random.default_rng(seed)
  target = np.ones((rows, length), np.int32)
  selected = np.zeros((rows, length), bool)
  for r in range(rows):
    n = rng.integers(length // 2, length + 1)
    target[r, :n] = rng.integers(4, vocab - 1, n)
    target[r, 0], target[r, n - 1] = 0, 2
    selected[r, :n] = rng.random(n) < 0.3
    selected[r, 1] = True  # at least one loss position per row
  source = np.where(selected, MASK_ID, target).astype(np.int32)
  return {"source": source, "target": target, "selected": selected}


def make_recipe(
  dropout: float = 0.1, kind: str = "data2vec", teacher_input: str = "unmasked"
) -> train_state_lib.Recipe:
  model = tiny_config(dropout=dropout, attention_dropout=dropout, intermediate_size=256)
  return train_state_lib.Recipe(
    model=model,
    objective=ObjectiveConfig(
      kind=kind, average_top_k_layers=2, mask_id=MASK_ID, teacher_input=teacher_input
    ),
    ema=EMAConfig(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10),
    optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1, max_steps=100, clip_norm=1.0),
  )


def make_plan(recipe, batches, *, micro_batches=1, head_positions=0, pack_buckets=0):
  return ExecutionPlan.for_objective(
    recipe.objective,
    batches[0]["source"].shape[1],
    head_positions_per_row=head_positions,
    micro_batches=micro_batches,
    pack_tokens=pack_buckets > 0,
    pack_buckets=max(pack_buckets, 1),
  )


# (recipe, plan, mesh_shape) -> (mesh, shardings, jitted step, {seed: host initial state}): the
# tests run the same step on the same mesh several times; each is compiled (and each initial
# state created) once per module instead of once per run.
_SETUPS: dict = {}


def setup_for(recipe, plan, mesh_shape):
  key = (recipe, plan, tuple(mesh_shape))
  if key not in _SETUPS:
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = sharding_lib.make_mesh(*mesh_shape, devices=devices)
    tx = make_optimizer(recipe.optimizer)
    _, shardings = train_state_lib.state_shardings(recipe, tx, mesh, plan.seq_len)
    step = train_step_lib.make_train_step(recipe, plan, tx, mesh, shardings)
    _SETUPS[key] = mesh, tx, shardings, step, {}
  return _SETUPS[key]


def initial_state(recipe, plan, mesh_shape, seed=0):
  """The sharded initial state `new_state_and_step` makes (created once per key and seed; later
  calls put a host copy back with the same shardings, since the step donates its state)."""
  mesh, tx, shardings, _, inits = setup_for(recipe, plan, mesh_shape)
  if seed not in inits:
    with sharding_lib.activate(mesh):
      state = train_state_lib.create_train_state(
        recipe, tx, jax.random.PRNGKey(seed), mesh, plan.seq_len, shardings
      )
    inits[seed] = jax.device_get(state)
    return state
  return jax.device_put(inits[seed], shardings)


def run_steps(
  recipe, mesh_shape, batches, seed=0, *, micro_batches=1, head_positions=0, pack_buckets=0
):
  """Runs len(batches) steps on a mesh of the first prod(mesh_shape) devices. The plan: the
  head on `head_positions` gathered slots per row (0: every position; the last blocks pruned
  with it), `micro_batches`, and with pack_buckets > 0 each batch packed as the trainer packs
  it (`ExecutionPlan.packing_for_batch`)."""
  plan = make_plan(
    recipe,
    batches,
    micro_batches=micro_batches,
    head_positions=head_positions,
    pack_buckets=pack_buckets,
  )
  mesh, _, _, step, _ = setup_for(recipe, plan, mesh_shape)
  state = initial_state(recipe, plan, mesh_shape, seed)
  with sharding_lib.activate(mesh):
    all_metrics = []
    for batch in batches:
      global_batch = {
        k: jax.device_put(v, sharding_lib.batch_sharding(mesh)) for k, v in batch.items()
      }
      packing = plan.packing_for_batch(
        batch,
        real_tokens(batch, recipe.model.pad_id).sum(axis=1),
        pad_id=recipe.model.pad_id,
        groups=sharding_lib.data_parallel_size(mesh),
      )
      # The test batches leave pads in every group.
      assert (packing is not None) == (pack_buckets > 0)
      state, metrics = step(state, global_batch, packing)
      all_metrics.append(jax.device_get(metrics))
    return jax.device_get(state), all_metrics, state


def max_abs_diff(a, b) -> float:
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


@pytest.fixture(scope="module")
def single_device_runs():
  """Reference runs on one device, by head positions: 'gathered' (the trainer's default: head,
  loss and the pruned last blocks on each row's gathered loss positions) or 'every'."""
  batches = [make_batch(8, 16, seed=s) for s in range(2)]
  most = max(int((b["source"] == MASK_ID).sum(1).max()) for b in batches)
  runs = {}

  def get(head_positions):
    if head_positions not in runs:
      k = {"gathered": most, "every": 0}[head_positions]
      recipe = make_recipe()
      state, metrics, _ = run_steps(recipe, (1, 1, 1), batches, head_positions=k)
      assert all(m["head_gathered"] == (head_positions == "gathered") for m in metrics)
      runs[head_positions] = recipe, k, batches, state, metrics
    return runs[head_positions]

  return get


# (2, 2, 2) uses every mesh axis at once; (1, 8, 1) shards 8 ways, where some dims (130
# positions) do not divide and stay replicated (`sharding._fit_spec`). A pure data mesh, or tensor
# 4 ways instead of 2, takes no code path these do not.
@pytest.mark.parametrize(
  "mesh_shape,head_positions",
  [((2, 2, 2), "gathered"), ((1, 8, 1), "gathered"), ((2, 2, 2), "every")],
)
def test_sharded_step_matches_single_device(single_device_runs, mesh_shape, head_positions):
  recipe, k, batches, ref_state, ref_metrics = single_device_runs(head_positions)
  state, metrics, device_state = run_steps(recipe, mesh_shape, batches, head_positions=k)
  for m, r in zip(metrics, ref_metrics):
    assert abs(m["loss"] - r["loss"]) <= 1e-5 * max(1.0, abs(r["loss"]))
    assert abs(m["grad_norm"] - r["grad_norm"]) <= 1e-5 * max(1.0, abs(r["grad_norm"]))
  assert max_abs_diff(state.params, ref_state.params) <= 1e-5
  assert max_abs_diff(state.ema_params, ref_state.ema_params) <= 1e-5
  assert max_abs_diff(state.opt_state, ref_state.opt_state) <= 1e-5
  # The parameters really are sharded as the rules say (not silently replicated).
  qkv = device_state.params["encoder"]["layers"]["attention"]["qkv"]["kernel"]
  spec = qkv.sharding.spec
  _, fsdp, tensor = mesh_shape
  if fsdp > 1:
    assert spec[1] == "fsdp"
  if tensor > 1:
    assert spec[3] == "tensor"
  distinct_blocks = {str(shard.index) for shard in qkv.addressable_shards}
  assert len(distinct_blocks) == fsdp * tensor  # replicated over `data` only


@pytest.mark.parametrize("kind", ["data2vec", "mlm"])
def test_gradient_accumulation_equals_large_batch(kind):
  batch = make_batch(8, 16, seed=3)
  big, big_metrics, _ = run_steps(make_recipe(dropout=0.0, kind=kind), (1, 1, 1), [batch])
  acc, acc_metrics, _ = run_steps(
    make_recipe(dropout=0.0, kind=kind), (2, 1, 1), [batch], micro_batches=4
  )
  assert acc_metrics[0]["num_masked"] == big_metrics[0]["num_masked"]
  assert abs(acc_metrics[0]["loss"] - big_metrics[0]["loss"]) <= 1e-5 * abs(big_metrics[0]["loss"])
  assert abs(acc_metrics[0]["grad_norm"] - big_metrics[0]["grad_norm"]) <= 1e-5 * max(
    1.0, big_metrics[0]["grad_norm"]
  )
  # The first update runs at lr 0 (the params cannot differ), so the accumulated gradient is
  # checked where it lands: Adam's moments. Leaf by leaf within 1e-5 of the leaf's largest entry
  # (float32 sums over 4 micro-batches in another order; a dropped or double-counted
  # micro-batch changes them by ~25%).
  assert max_abs_diff(acc.params, big.params) == 0.0
  for a, b in zip(
    jax.tree_util.tree_leaves(acc.opt_state), jax.tree_util.tree_leaves(big.opt_state)
  ):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b), initial=0.0) <= 1e-5 * np.max(np.abs(b), initial=0.0)


@pytest.mark.parametrize("mesh_shape,micro_batches", [((2, 1, 1), 2), ((1, 2, 2), 1)])
def test_packed_sharded_step_matches_padded_single_device(mesh_shape, micro_batches):
  # One packing group per data shard of each micro-batch (here 2 rows each): no token moves
  # between devices, and the update equals the padded step's (no dropout: its bits differ).
  # Rows of 8..16 tokens in 24 positions: every group has pads to skip.
  widen = lambda b: {
    k: np.pad(v, ((0, 0), (0, 8)), constant_values=1 if v.dtype != bool else 0)
    for k, v in b.items()
  }
  batches = [widen(make_batch(8, 16, seed=s)) for s in (4, 5)]
  most = max(int((b["source"] == MASK_ID).sum(1).max()) for b in batches)
  ref, ref_metrics, _ = run_steps(make_recipe(dropout=0.0), (1, 1, 1), batches, head_positions=most)
  packed, metrics, _ = run_steps(
    make_recipe(dropout=0.0),
    mesh_shape,
    batches,
    micro_batches=micro_batches,
    head_positions=most,
    pack_buckets=8,
  )
  for m, r in zip(metrics, ref_metrics):
    assert m["head_gathered"] == 1
    assert abs(m["loss"] - r["loss"]) <= 1e-5 * max(1.0, abs(r["loss"]))
    assert abs(m["grad_norm"] - r["grad_norm"]) <= 1e-5 * max(1.0, abs(r["grad_norm"]))
  assert max_abs_diff(packed.params, ref.params) <= 1e-5
  assert max_abs_diff(packed.ema_params, ref.ema_params) <= 1e-5


def test_trainer_packs_from_the_global_rows_without_communication():
  """The capacity comes from the pipeline's token counts of the whole global batch, so a
  process whose own rows are short still picks the capacity its peers' full rows need."""
  batch = make_batch(8, 16, seed=4)  # this process's 8 rows (process 0 of 2)
  local = real_tokens(batch, 1).sum(axis=1)
  other = np.full(8, 16)  # the other process's rows: no pads at all
  plan = ExecutionPlan(seq_len=16, pack_tokens=True, pack_buckets=4)
  spec = plan.packing_for_batch(batch, np.concatenate([local, other]), pad_id=1, groups=2)
  assert spec is None  # the other group is full: every process runs unpacked, together
  other = np.full(8, 9)
  spec = plan.packing_for_batch(batch, np.concatenate([local, other]), pad_id=1, groups=2)
  most = max(local.sum(), 72)
  assert spec.groups == 2 and spec.capacity % 32 == 0 and most <= spec.capacity < most + 32
  # Real tokens of this process's rows that disagree with the pipeline's counts: an error
  # naming the key, not a capacity that might be too small (which would make the loss NaN).
  odd = {k: v.copy() for k, v in batch.items()}
  odd["source"][:] = MASK_ID  # a <mask> where the target has a pad still needs a slot
  with pytest.raises(ValueError, match="disagree with the input pipeline's global row tokens"):
    plan.packing_for_batch(odd, np.concatenate([local, other]), pad_id=1, groups=2)


def test_first_step_teacher_is_initial_student_and_ema_follows_update():
  """Step 0's teacher = θ0; after the update, EMA = τ(1)·θ0 + (1-τ(1))·θ1 on the blocks and the
  embeddings are the student's (ema_transformer_layers_only)."""
  recipe = make_recipe(dropout=0.0)
  batches = [make_batch(4, 16, seed=0), make_batch(4, 16, seed=1)]
  # The initial state the runs below start from (`create_train_state`, seed 0).
  state0 = jax.device_get(initial_state(recipe, make_plan(recipe, batches), (1, 1, 1)))
  # The teacher starts equal to the student.
  assert set(state0.ema_params) == {"layers"}  # embeddings: the student's (layers only)
  assert max_abs_diff(state0.ema_params["layers"], state0.params["encoder"]["layers"]) == 0.0
  state1, _, _ = run_steps(recipe, (1, 1, 1), batches[:1])
  state2, metrics, _ = run_steps(recipe, (1, 1, 1), batches)
  taus = [0.9 + (0.99 - 0.9) * k / 10 for k in (1, 2)]
  assert [m["ema_decay"] for m in metrics] == pytest.approx(taus, rel=1e-6)
  for tau, before, after in ((taus[0], state0, state1), (taus[1], state1, state2)):
    expected_layers = jax.tree_util.tree_map(
      lambda e, s: tau * e + (1 - tau) * s,
      before.ema_params["layers"],
      after.params["encoder"]["layers"],
    )
    assert max_abs_diff(after.ema_params["layers"], expected_layers) <= 1e-6
  # Update 1 runs with lr 0 (fairseq), update 2 moves the student: the check is not vacuous.
  assert max_abs_diff(state1.params, state0.params) == 0.0
  assert max_abs_diff(state2.params["encoder"]["layers"], state1.params["encoder"]["layers"]) > 1e-5


def test_lr_is_zero_at_first_update(single_device_runs):
  # The first update of an already-run step (make_recipe(), one device); the batch is irrelevant.
  _, _, _, _, metrics = single_device_runs("every")
  assert metrics[0]["lr"] == 0.0


def test_batch_not_divisible_by_micro_batches_is_refused():
  # The step refuses while tracing: lowering it on the abstract state is enough (no init, no
  # compile).
  recipe = make_recipe()
  batch = make_batch(4, 16)
  plan = make_plan(recipe, [batch], micro_batches=3)
  mesh = sharding_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  tx = make_optimizer(recipe.optimizer)
  abstract, shardings = train_state_lib.state_shardings(recipe, tx, mesh, plan.seq_len)
  step = train_step_lib.make_train_step(recipe, plan, tx, mesh, shardings)
  with sharding_lib.activate(mesh), pytest.raises(ValueError, match="micro-batches"):
    step.lower(abstract, batch)


@pytest.mark.parametrize("decay_bias_and_norm", [True, False])
def test_adam_moments_shard_like_their_parameters(decay_bias_and_norm):
  """`tx.init` on the boxed parameters keeps their logical axes on Adam's mu and nu (with or
  without the weight-decay mask), so the moments shard like the parameters they mirror."""
  recipe = make_recipe()
  recipe = train_state_lib.Recipe(
    model=recipe.model,
    objective=recipe.objective,
    ema=recipe.ema,
    optimizer=OptimizerConfig(decay_bias_and_norm=decay_bias_and_norm),
  )
  mesh = sharding_lib.make_mesh(1, 2, 4)
  _, shardings = train_state_lib.state_shardings(recipe, make_optimizer(recipe.optimizer), mesh)
  by_path = {
    jax.tree_util.keystr(p): s.spec
    for p, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]
  }
  moments = 0
  for path, sharding in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]:
    name = jax.tree_util.keystr(path)
    mirrored = [spec for key, spec in by_path.items() if name.endswith(key)]
    if ".mu[" in name or ".nu[" in name:
      moments += 1
      assert mirrored and sharding.spec == mirrored[0], name
    else:
      assert sharding.spec == jax.sharding.PartitionSpec(), name  # counters: replicated
  assert moments == 2 * len(by_path)
  assert any(spec != jax.sharding.PartitionSpec() for spec in by_path.values())
