"""The fine-tuning state: the classifier's parameters (pretrained encoder + a fresh head), AdamW's
state, the update count and the dropout key, created directly in its sharded layout.

Head initialisation (docs/reference/finetuning_reference.md §1.3): fairseq registers the
classification head after `init_bert_params`, so it keeps PyTorch's `nn.Linear` default,
U(+-1/sqrt(fan_in)) for weights and biases ('torch_default', the paper's recipe); HF initialises a
missing head with N(0, 0.02) weights and zero biases ('bert').
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data2vec_jax.runtime import sharding as sharding_lib
from data2vec_jax.runtime.checkpoint import structure_differences

HEAD_INITS = ("torch_default", "bert")


@flax.struct.dataclass
class FinetuneState:
  """step: int32 [] completed updates. params: {'encoder', 'classifier'} (param_dtype). opt_state:
  AdamW's moments (sharded like the parameters). rng: uint32 [2]; update s's dropout key is
  `fold_in(rng, s)`, so a resumed run draws the same dropout masks."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def init_head(params: Any, rng: jax.Array, head_init: str) -> Any:
  """Re-draws every Linear of a head tree ({name: {'kernel' [in, out], 'bias' [out]}})."""
  if head_init not in HEAD_INITS:
    raise ValueError(f"head_init={head_init!r}; expected one of {HEAD_INITS}")
  out = {}
  for i, (name, layer) in enumerate(sorted(params.items())):
    k_rng, b_rng = jax.random.split(jax.random.fold_in(rng, i))
    kernel, bias = layer["kernel"], layer["bias"]
    if head_init == "bert":
      out[name] = {
        "kernel": (0.02 * jax.random.normal(k_rng, kernel.shape)).astype(kernel.dtype),
        "bias": jnp.zeros(bias.shape, bias.dtype),
      }
    else:
      bound = 1.0 / math.sqrt(kernel.shape[0])
      uniform = lambda r, x: jax.random.uniform(r, x.shape, jnp.float32, -bound, bound)
      out[name] = {
        "kernel": uniform(k_rng, kernel).astype(kernel.dtype),
        "bias": uniform(b_rng, bias).astype(bias.dtype),
      }
  return out


def _boxed_params(model: nn.Module, seq_len: int) -> Any:
  dummy = jnp.full((1, seq_len), 2, jnp.int32)
  return model.init(jax.random.PRNGKey(0), dummy)["params"]


def state_shardings(
  model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[FinetuneState, FinetuneState]:
  """(abstract unboxed state, NamedSharding tree) from the parameters' logical axes."""

  def build():
    boxed = _boxed_params(model, 8)
    return FinetuneState(
      step=jnp.zeros((), jnp.int32),
      params=boxed,
      opt_state=tx.init(boxed),  # boxed: the moments inherit their parameter's axes
      rng=jax.random.PRNGKey(0),
    )

  boxed = jax.eval_shape(build)
  replicated = NamedSharding(mesh, P())
  shardings = FinetuneState(
    step=replicated,
    params=sharding_lib.logical_to_shardings(boxed.params, mesh),
    opt_state=sharding_lib.logical_to_shardings(boxed.opt_state, mesh),
    rng=replicated,
  )
  return sharding_lib.placed_shapes(boxed, shardings), shardings


def create_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  shardings: FinetuneState,
  *,
  encoder_params: Any | None,
  head_params: Any | None,
  seed: int,
  head_init: str,
) -> FinetuneState:
  """A fresh state: the given encoder (None: randomly initialised, BERT init) and head (None:
  `init_head(head_init)`), each leaf placed with its sharding; zeroed Adam moments."""
  rng = jax.random.PRNGKey(seed)
  init_rng, head_rng, state_rng = jax.random.split(rng, 3)

  def random_params(r):
    dummy = jnp.full((1, 8), 2, jnp.int32)
    params = nn.meta.unbox(model.init(r, dummy)["params"])
    params["classifier"] = init_head(params["classifier"], head_rng, head_init)
    return params

  with sharding_lib.activate(mesh):
    params = jax.jit(random_params, out_shardings=shardings.params)(init_rng)
    if encoder_params is not None:
      _check_same_tree(encoder_params, params["encoder"], "the pretrained encoder")
      params["encoder"] = jax.device_put(
        _cast_like(encoder_params, params["encoder"]), shardings.params["encoder"]
      )
    if head_params is not None:
      _check_same_tree(head_params, params["classifier"], "the classifier head")
      params["classifier"] = jax.device_put(
        _cast_like(head_params, params["classifier"]), shardings.params["classifier"]
      )
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return FinetuneState(
    step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
    params=params,
    opt_state=opt_state,
    rng=jax.device_put(state_rng, shardings.rng),
  )


def _cast_like(tree: Any, like: Any) -> Any:
  return jax.tree_util.tree_map(lambda x, y: jnp.asarray(x, y.dtype), tree, like)


def _check_same_tree(given: Any, expected: Any, what: str) -> None:
  problems = structure_differences(given, expected)
  if problems:
    raise ValueError(f"{what} does not fit the model: {'; '.join(problems)}")
