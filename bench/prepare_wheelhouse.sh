#!/usr/bin/env bash
# Downloads, here, the pure-Python wheels that the lent GPU machine's image lacks, into
# wheelhouse/ (git-ignored), for `bench/gpu_session.sh` to install there: that machine reaches no
# package registry, so they travel with the working tree (the device tool's `carry`).
#
#   bash bench/prepare_wheelhouse.sh            # then: run(command="bash bench/gpu_session.sh",
#                                               #           carry=["wheelhouse"])
#
# The image (Python 3.12, jax 0.11.2 + CUDA 13 plugin, flax, optax, orbax-checkpoint, torch 2.11,
# transformers 5.17, sentencepiece, tokenizers, safetensors, absl-py, matplotlib, protobuf,
# PyYAML) lacks ml-collections and tensorboardX; their own dependencies are all in the image.
# Versions are requirements.txt's pins (the tested ones). --no-deps: only what is named travels,
# so nothing can shadow the image's JAX/CUDA stack.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$REPO/wheelhouse}
PY=${PYTHON:-python3}
PACKAGES=(ml-collections tensorboardX)

pins=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -i "^${name}==" "$REPO/requirements.txt" || true)
  if [[ -z $pin ]]; then
    echo "prepare_wheelhouse.sh: error: $name is not pinned in requirements.txt" >&2
    exit 1
  fi
  pins+=("$pin")
done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any -d "$DEST" "${pins[@]}"
ls -l "$DEST"
n=$(ls "$DEST"/*.whl | wc -l)
if [[ $n -ne ${#PACKAGES[@]} ]]; then
  echo "prepare_wheelhouse.sh: error: expected ${#PACKAGES[@]} wheels in $DEST, found $n" >&2
  exit 1
fi
