"""Dense-layer contractions `y = x ._c W`: the last `c` axes of x against the first `c` of W.

Every projection of the model (q/k/v, attention output, FFN, heads) is one of these. Forward and
gradients are the plain einsum's; what differs is how the weight gradient is *spelled* on CPU:

  dW[k..., o...] = sum_b x[b..., k...] dy[b..., o...]

Autodiff of an einsum emits this as a dot whose lhs contracts over its *leading* axes (x^T). XLA:CPU
sends a dot to its fast matmul library (YNNPACK) only when the lhs contracts over its trailing
axes and the rhs over its leading ones; otherwise it falls back to a generic Eigen contraction,
much slower for the FFN weight gradients (measured in bench/README.md). On CPU
we therefore materialise x^T explicitly, behind an optimization barrier so XLA's transpose folding
cannot fold it back into the dot: one cheap copy buys a canonical, library-backed matmul.

On GPU and TPU the matmul units take transposed operands for free, so the plain einsum (and
XLA's own choice of operand order) is used there: `canonical_weight_grad=None` picks by backend.
Numerically the two spellings are the same sum in possibly different order (float rounding only);
`tests/model/test_encoder_options.py` checks values and gradients against the einsum.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# The reference's `init_bert_params`: N(0, 0.02) for every Linear.
INIT_STD = 0.02


def _dot(x: jax.Array, kernel: jax.Array, c: int) -> jax.Array:
  """x [b..., k...] (c trailing k axes), kernel [k..., o...] -> [b..., o...]."""
  contract = (tuple(range(x.ndim - c, x.ndim)), tuple(range(c)))
  return lax.dot_general(x, kernel, (contract, ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _contract_canonical(x: jax.Array, kernel: jax.Array, c: int) -> jax.Array:
  return _dot(x, kernel, c)


def _contract_canonical_fwd(x, kernel, c):
  return _dot(x, kernel, c), (x, kernel)


def _contract_canonical_bwd(c, residuals, dy):
  x, kernel = residuals
  num_batch = x.ndim - c
  num_out = kernel.ndim - c
  # dx[b..., k...] = sum_o dy[b..., o...] kernel[k..., o...]
  dx = lax.dot_general(
    dy,
    kernel,
    ((tuple(range(num_batch, num_batch + num_out)), tuple(range(c, c + num_out))), ((), ())),
  )
  batch_axes = tuple(range(num_batch))
  if x.size <= dy.size:
    # dW[k..., o...] = sum_b x^T[k..., b...] dy[b..., o...], x^T materialised (module doc).
    x_t = lax.optimization_barrier(jnp.transpose(x, tuple(range(num_batch, x.ndim)) + batch_axes))
    dw = lax.dot_general(x_t, dy, ((tuple(range(c, c + num_batch)), batch_axes), ((), ())))
  else:
    # dy is the smaller activation (e.g. the FFN's fc2, F > D): transpose it instead and
    # transpose the weight-sized product back, dW = (dy^T x)^T.
    dy_t = lax.optimization_barrier(
      jnp.transpose(dy, tuple(range(num_batch, dy.ndim)) + batch_axes)
    )
    dw_t = lax.optimization_barrier(
      lax.dot_general(dy_t, x, ((tuple(range(num_out, num_out + num_batch)), batch_axes), ((), ())))
    )
    dw = jnp.transpose(dw_t, tuple(range(num_out, num_out + c)) + tuple(range(num_out)))
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


_contract_canonical.defvjp(_contract_canonical_fwd, _contract_canonical_bwd)


def contract(
  x: jax.Array, kernel: jax.Array, contract_ndim: int = 1, canonical_weight_grad: bool | None = None
) -> jax.Array:
  """`x ._c kernel` in the dtype of its (already promoted) operands.

  Args:
    x: [b..., k...] activations whose trailing `contract_ndim` axes are contracted.
    kernel: [k..., o...] weights whose leading `contract_ndim` axes match x's trailing ones.
    contract_ndim: c >= 1.
    canonical_weight_grad: spell the weight gradient as a canonical matmul (module docstring);
      None = on the CPU backend only.
  Returns:
    [b..., o...].
  """
  if not 1 <= contract_ndim <= min(x.ndim, kernel.ndim):
    raise ValueError(f"contract_ndim={contract_ndim} for x {x.shape} and kernel {kernel.shape}")
  if x.shape[x.ndim - contract_ndim :] != kernel.shape[:contract_ndim]:
    raise ValueError(
      f"cannot contract the last {contract_ndim} axes of x {x.shape} with the "
      f"first {contract_ndim} of kernel {kernel.shape}"
    )
  if canonical_weight_grad is None:
    canonical_weight_grad = jax.default_backend() == "cpu"
  if canonical_weight_grad:
    return _contract_canonical(x, kernel, contract_ndim)
  return _dot(x, kernel, contract_ndim)


class Projection(nn.Module):
  """`contract(x, kernel, contract_ndim) + bias`, kernel N(0, 0.02), zero bias (the reference's
  `init_bert_params`), with logical axis names on every parameter dimension.

  Kernel [k..., o...] (`kernel_shape`, `kernel_axes`); bias [o...] takes the trailing shape and
  axis names. With `contract_ndim=1` and a 2-D kernel this is `nn.Dense` with the same parameter
  names and shapes ({'kernel': [in, out], 'bias': [out]}); multi-dimensional kernels keep
  per-dimension names for the fused q/k/v ([D, 3, H, Dh]) and the head-merging output projection
  ([H, Dh, D]), which Flax's DenseGeneral would flatten.
  """

  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  dtype: Any
  param_dtype: Any
  contract_ndim: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, first_output: slice | None = None) -> jax.Array:
    """x: [b..., k...] -> [b..., o...] in `dtype`.

    `first_output` computes only a static slice of the first output axis (e.g. `slice(1, 3)`
    for k and v of the fused q/k/v kernel [D, 3, H, Dh]): [b..., o0', o...]. The parameters are
    the same either way, so one module can be called on different slices.
    """
    c = self.contract_ndim
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), self.kernel_axes),
      self.kernel_shape,
      self.param_dtype,
    )
    bias = self.param(
      "bias",
      nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[c:]),
      self.kernel_shape[c:],
      self.param_dtype,
    )
    if first_output is not None:
      if len(self.kernel_shape) == c:
        raise ValueError(f"first_output needs an output axis; kernel {self.kernel_shape} has none")
      kernel = kernel[(slice(None),) * c + (first_output,)]
      bias = bias[first_output]
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return contract(x, kernel, c) + bias
