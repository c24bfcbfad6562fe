"""Safe reading of PyTorch-side weight files: fairseq `.pt`, `pytorch_model.bin`, `.safetensors`
(and `save_safetensors`, the one writer of `.safetensors` files).

Nothing here executes code from a file. safetensors is a plain tensor container. `.pt`/`.bin`
files are pickles, so they are read in two stages:

1. `torch.load(weights_only=True)` with only `argparse.Namespace` added to torch's allow-list
   (legacy fairseq checkpoints store their hyper-parameters as an `args` Namespace).
2. Only if stage 1 refused a global from `omegaconf`, `fairseq` or `typing` (fairseq pickles its
   `cfg` as an omegaconf `DictConfig`, whose metadata refers to fairseq dataclass and enum types),
   the file is read again with `RestrictedUnpickler`: torch's own weights-only allow-list, plus
   `argparse.Namespace`, plus *inert stand-ins* for omegaconf/fairseq/typing globals. A stand-in
   is a class that only records the arguments and state it is given; `plain_data` turns the
   captured omegaconf containers into plain dicts and lists. Every other global is refused with
   an error that names it.

Before either stage, the container is checked without unpickling anything: a file that is neither
a zip archive holding `data.pkl` (torch >= 1.6) nor a pickle opening with torch's legacy magic
number is refused as "not a PyTorch checkpoint". torch's own advice in its errors (re-run with
`weights_only=False`) is never relayed: for an untrusted file it is advice to run its code.

Every tensor any loader returns passes through `to_numpy`, which refuses NaN/Inf values.

Every failure is raised as `CheckpointError` with the path and the reason, never as a raw pickle
or zip traceback.

torch is imported lazily: the rest of the library does not need it.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import json
import os
import pickle
import re
import zipfile
from typing import Any, Mapping

import numpy as np

from data2vec_jax import file_modes

# Globals whose module starts with one of these become inert stand-ins (stage 2 only).
_INERT_MODULE_PREFIXES = ("omegaconf", "fairseq", "typing")


class CheckpointError(ValueError):
  """A weight file or directory cannot be used; the message says which and why."""


# ----------------------------------------------------------------------------------------------
# Inert stand-ins for omegaconf / fairseq / typing globals.


class InertObject:
  """An instance of a refused-but-harmless class: records constructor args and pickled state.

  Subclasses are created per global by `_inert_class`; `_inert_global` names the original.
  Nothing of the original class runs: `__new__`, `__init__` and `__setstate__` only store.
  """

  _inert_global: str = "?"

  def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
    obj = super().__new__(cls)
    obj.__dict__["_inert_args"] = args
    obj.__dict__["_inert_state"] = None
    return obj

  def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args)
    pass

  def __setstate__(self, state: Any) -> None:  # BUILD
    self.__dict__["_inert_state"] = state

  def __repr__(self) -> str:
    return f"<inert {self._inert_global}>"


def _inert_class(module: str, name: str) -> type:
  return type(name, (InertObject,), {"_inert_global": f"{module}.{name}", "__module__": __name__})


def _allowed_globals() -> dict[str, Any]:
  """torch's weights-only allow-list ('module.name' -> object) plus argparse.Namespace."""
  import torch  # pylint: disable=import-outside-toplevel

  allowed: dict[str, Any] = {}
  try:
    # pylint: disable-next=protected-access
    allowed.update(torch._weights_only_unpickler._get_allowed_globals())
  except AttributeError as e:  # a future torch renamed it: fail loudly rather than allow more
    raise CheckpointError(
      "this torch version does not expose its weights-only allow-list; "
      "the restricted unpickler cannot be built"
    ) from e
  allowed["argparse.Namespace"] = argparse.Namespace
  # Plain builtin types: omegaconf metadata refers to them (e.g. object_type=dict); calling
  # them builds plain data only.
  for t in (dict, list, tuple, set, frozenset, int, float, str, bool, bytes, complex):
    allowed[f"builtins.{t.__name__}"] = t
  return allowed


class RestrictedUnpickler(pickle.Unpickler):
  """`pickle.Unpickler` whose `find_class` allows only torch-safe globals, Namespace, stand-ins.

  `find_class` is pickle's single gate to importable objects (GLOBAL, STACK_GLOBAL, INST, OBJ
  and EXT all go through it), so refusing there refuses everything else.
  """

  def __init__(self, *args: Any, **kwargs: Any) -> None:
    super().__init__(*args, **kwargs)
    self._allowed = _allowed_globals()

  def find_class(self, module: str, name: str) -> Any:
    # Protocol <= 2 pickles may use Python 2 names (`__builtin__.dict`); map them as pickle does.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    full = f"{module}.{name}"
    if full in self._allowed:
      return self._allowed[full]
    if module.split(".")[0] in _INERT_MODULE_PREFIXES:
      return _inert_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load global {full!r} (not on the allow-list)")


class _RestrictedPickleModule:
  """What `torch.load(pickle_module=...)` needs: `Unpickler` and `load`."""

  __name__ = "data2vec_jax.weights.torch_io.restricted_pickle"
  Unpickler = RestrictedUnpickler

  @staticmethod
  def load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def plain_data(obj: Any) -> Any:
  """Recursively turns what a checkpoint pickles as config into plain Python data.

  omegaconf `DictConfig`/`ListConfig` stand-ins become dicts/lists (from their `_content`),
  value nodes become their `_val`, enum stand-ins their value, `argparse.Namespace` a dict, and
  type references (e.g. `typing.Any`) their dotted name. Tensors and arrays are left as they are.
  """
  if isinstance(obj, InertObject):
    state = obj._inert_state  # pylint: disable=protected-access
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
      state = state[0]  # (dict state, slot state)
    if isinstance(state, dict) and "_content" in state:
      return plain_data(state["_content"])
    if isinstance(state, dict) and "_val" in state:
      return plain_data(state["_val"])
    args = obj._inert_args  # pylint: disable=protected-access
    if len(args) == 1 and state is None:
      return plain_data(args[0])  # an Enum member pickles as cls(value)
    return obj._inert_global  # a type reference or an object we cannot interpret
  if isinstance(obj, type) and issubclass(obj, InertObject):
    return obj._inert_global
  if isinstance(obj, argparse.Namespace):
    return {k: plain_data(v) for k, v in vars(obj).items()}
  if isinstance(obj, Mapping):
    return {k: plain_data(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return (
      type(obj)(plain_data(v) for v in obj)
      if isinstance(obj, list)
      else tuple(plain_data(v) for v in obj)
    )
  return obj


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# Lines of torch.load's errors that are boilerplate, not the reason: "Weights only load failed",
# "Please file an issue ...", "Check the documentation ...", and the advice to re-run with
# weights_only=False (for an untrusted file that is advice to run its code, so never relayed).
_TORCH_BOILERPLATE = re.compile(
  r"weights.only|please file an issue|check the documentation|"
  r"trusted source",
  re.IGNORECASE,
)
# The first thing a legacy (pre-zip, torch < 1.6) `torch.save` file holds: a pickled int.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


def _refused_global(message: str) -> str | None:
  """The global a weights-only refusal complains about, if it names one: dotted
  (`module.name`), or a bare builtin as torch prints it (`GLOBAL eval`)."""
  names = [m.group(1) for m in _REFUSED_GLOBAL.finditer(message)]
  return next((n for n in names if "." in n), names[0] if names else None)


def _torch_reason(error: BaseException) -> str:
  """`type: reason` of a torch.load error, without torch's boilerplate and weights_only advice."""
  import torch  # pylint: disable=import-outside-toplevel

  text = str(error).replace(getattr(torch.serialization, "UNSAFE_MESSAGE", "\0"), "")
  for line in text.splitlines():
    if line.strip() and not _TORCH_BOILERPLATE.search(line):
      return f"{type(error).__name__}: {line.strip()}"
  return type(error).__name__


class _GlobalRefused(pickle.UnpicklingError):
  """`_NoGlobalsUnpickler` met a global: the file is a pickle, of something other than data."""


class _NoGlobalsUnpickler(pickle.Unpickler):
  """Reads plain data only (ints, strings, containers): every global is refused, so nothing runs."""

  def find_class(self, module: str, name: str) -> Any:
    raise _GlobalRefused(f"{module}.{name}")


def _not_a_checkpoint(path: str) -> str | None:
  """Why `path` is not a `torch.save` file at all (a short reason), or None if it may be one.

  Only the container is examined, as torch itself tells its formats apart: a file opening with
  a zip signature must be a readable archive holding `<dir>/data.pkl` (and not a TorchScript
  archive); any other file must be a pickle whose first object is the legacy magic number (read
  with `_NoGlobalsUnpickler`). The pre-0.4 tar format of torch is not read.
  """
  with open(path, "rb") as f:
    head = f.read(4)
    if not head:
      return "empty file"
    f.seek(0)
    if head == b"PK\x03\x04":  # torch's own test for its zip format
      try:
        with zipfile.ZipFile(f) as archive:
          names = archive.namelist()
      except (zipfile.BadZipFile, EOFError, OSError):  # e.g. the central directory was cut off
        return "truncated or corrupt zip archive"
      parts = [name.split("/") for name in names]
      if any(len(p) == 2 and p[1] == "constants.pkl" for p in parts):
        return "a TorchScript archive, not a torch.save file"
      if not any(len(p) == 2 and p[1] == "data.pkl" for p in parts):
        return "a zip archive without data.pkl"
      return None
    try:
      first = _NoGlobalsUnpickler(f).load()
    except _GlobalRefused:
      return "a pickle not written by torch.save"
    except Exception:  # pylint: disable=broad-except  # garbage makes pickle raise anything
      return "neither a zip archive nor a pickle"
    if not (isinstance(first, int) and first == _LEGACY_MAGIC_NUMBER):
      return "a pickle not written by torch.save"
  return None


def _unreadable(path: str, error: BaseException) -> CheckpointError:
  """The error for a file that looks like a checkpoint but cannot be read (cut, damaged)."""
  return CheckpointError(
    f"{path}: cannot read as a PyTorch checkpoint (truncated or corrupt?): {_torch_reason(error)}"
  )


def load_torch_pickle(path: str | os.PathLike[str]) -> Any:
  """Reads a `torch.save` file without executing code from it (see the module docstring).

  Returns the unpickled object with tensors as CPU `torch.Tensor`s and any omegaconf/fairseq
  objects as `InertObject`s (pass them through `plain_data`).

  Raises:
    CheckpointError: missing file, not a PyTorch checkpoint at all, truncated or corrupt, or a
      refused global (named).
  """
  import torch  # pylint: disable=import-outside-toplevel

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file")
  reason = _not_a_checkpoint(path)
  if reason is not None:
    raise CheckpointError(f"{path}: not a PyTorch checkpoint ({reason})")
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    refused = _refused_global(str(e))
    if refused is None:
      raise _unreadable(path, e) from None
    if refused.split(".")[0] not in _INERT_MODULE_PREFIXES:
      raise CheckpointError(
        f"{path}: refused to unpickle: the file needs global {refused}, "
        "which is not on the allow-list"
      ) from None
  except Exception as e:  # zip/storage errors on truncated or corrupt files
    raise _unreadable(path, e) from None
  # Stage 2: the file holds omegaconf/fairseq objects; read it with inert stand-ins.
  try:
    return torch.load(
      path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule
    )
  except pickle.UnpicklingError as e:
    raise CheckpointError(f"{path}: refused to unpickle: {e}") from None
  except Exception as e:
    raise _unreadable(path, e) from None


def to_numpy(tensor: Any, name: str, *, upcast: bool = True) -> np.ndarray:
  """A loaded tensor as a numpy array: the one door every loader's tensors pass through.

  Args:
    tensor: a torch tensor or numpy array.
    name: its checkpoint key, for errors.
    upcast: turn float16/bfloat16 into float32 (exact); torch half tensors always are (numpy
      has no bfloat16 of its own).
  Raises:
    CheckpointError: not a tensor, or NaN/Inf values (which would silently make every feature
      non-finite). The message names the tensor; file-level callers add the path.
  """
  if isinstance(tensor, np.ndarray):
    array = tensor
  else:
    import torch  # pylint: disable=import-outside-toplevel

    if not isinstance(tensor, torch.Tensor):
      raise CheckpointError(f"{name}: expected a tensor, got {type(tensor).__name__}")
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.float16, torch.bfloat16):
      tensor = tensor.float()
    array = tensor.numpy()
  if upcast:
    array = _upcast(array)
  # ml_dtypes floats (bfloat16, float8_*) have dtype kind 'V', so their name decides.
  if array.dtype.kind in "fc" or array.dtype.name.startswith(("bfloat", "float")):
    non_finite = array.size - int(np.count_nonzero(np.isfinite(array)))
    if non_finite:
      raise CheckpointError(
        f"tensor {name!r} has {non_finite} NaN/Inf values; the checkpoint is "
        "corrupt or diverged, load an earlier one"
      )
  return array


def arrays_from(
  path: str, tensors: Mapping[str, Any], *, upcast: bool = True
) -> dict[str, np.ndarray]:
  """`to_numpy` of every tensor read from `path`; its errors name the file as well."""
  try:
    return {name: to_numpy(tensor, name, upcast=upcast) for name, tensor in tensors.items()}
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None


def load_safetensors(path: str | os.PathLike[str], *, upcast: bool = True) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file as numpy (no torch needed).

  Args:
    upcast: turn float16/bfloat16 into float32 (exact), as the importers want; False keeps the
      stored dtype (bfloat16 as `ml_dtypes.bfloat16`).
  """
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file")
  try:
    with safe_open(path, framework="numpy") as f:
      raw = {key: f.get_tensor(key) for key in f.keys()}
  except Exception as e:
    raise CheckpointError(
      f"{path}: cannot read as safetensors (truncated or corrupt?): {type(e).__name__}: {e}"
    ) from None
  return arrays_from(path, raw, upcast=upcast)


def save_safetensors(path: str, arrays: Mapping[str, np.ndarray], file_format: str) -> None:
  """Writes `arrays` (C-contiguous copies where needed) as a `.safetensors` file whose metadata
  says `{"format": file_format}`, readable as a file `open()` would create (`file_modes`)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  save_file(
    {k: np.ascontiguousarray(v) for k, v in arrays.items()}, path, metadata={"format": file_format}
  )
  file_modes.make_readable(path)  # save_file leaves it 0600


def _upcast(array: np.ndarray) -> np.ndarray:
  return array.astype(np.float32) if array.dtype.name in ("float16", "bfloat16") else array


def load_hf_state_dict(directory: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], str]:
  """The state dict of a Hugging Face model directory, as numpy arrays.

  Looks for, in this order: `model.safetensors`, `model.safetensors.index.json` (shards),
  `pytorch_model.bin`, `pytorch_model.bin.index.json`. The `.bin` files are read weights-only.

  Returns:
    (name -> array, the file or index that was read).
  """
  directory = os.fspath(directory)
  single_st = os.path.join(directory, "model.safetensors")
  index_st = single_st + ".index.json"
  single_bin = os.path.join(directory, "pytorch_model.bin")
  index_bin = single_bin + ".index.json"
  if os.path.isfile(single_st):
    return load_safetensors(single_st), single_st
  if os.path.isfile(index_st) or os.path.isfile(index_bin):
    index = index_st if os.path.isfile(index_st) else index_bin
    try:
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
      raise CheckpointError(f"{index}: not a valid shard index: {e}") from None
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(directory, shard)
      state.update(
        load_safetensors(shard_path)
        if shard.endswith(".safetensors")
        else _bin_state_dict(shard_path)
      )
    missing = sorted(set(weight_map) - set(state))
    if missing:
      raise CheckpointError(f"{index}: shards lack tensors the index lists: {missing}")
    return state, index
  if os.path.isfile(single_bin):
    return _bin_state_dict(single_bin), single_bin
  raise CheckpointError(
    f"{directory}: no weights found (looked for model.safetensors, "
    f"model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json)"
  )


def _bin_state_dict(path: str) -> dict[str, np.ndarray]:
  state = load_torch_pickle(path)
  if not isinstance(state, Mapping):
    raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
  return arrays_from(path, state)
