#!/usr/bin/env bash
# One-shot GPU session: everything a lent GPU machine should measure, in one command, within
# ~9 minutes, every part under a hard timeout (a hang costs that part, not the lease).
#
#   bash bench/prepare_wheelhouse.sh                      # here, once (wheelhouse/, git-ignored)
#   device run: command="bash bench/gpu_session.sh", carry=["wheelhouse"], timeout_s=600
#   bash bench/gpu_session.sh --allow-cpu                 # the CPU dry run (tests/e2e/test_gpu_session.py)
#
# On the machine it:
#  1. installs the carried wheels that the image's Python lacks into /tmp/d2v_site (--no-deps,
#     --target, then PYTHONPATH): the image's JAX, CUDA plugin and torch are never touched;
#  2. writes versions.json (Python, jax/jaxlib/plugins, flax, optax, orbax, torch, transformers,
#     the devices, nvidia-smi);
#  3. bench/gpu_checks.py: encoder parity fp32 and bf16 against the PyTorch reference on the same
#     GPU, the train step on a 1-device mesh against CPU, cuDNN vs XLA attention (checks.json);
#  4. bench/bench_gpu.py side by side at batch 64 x 512 tokens, attention dropout 0.1 (the
#     recipe): JAX, and the PyTorch reference step (bf16 autocast, SDPA, fused AdamW) eager and
#     torch.compile'd;
#  5. the largest batch: JAX at 128, 256, 512, 1024 until the first OOM;
#  6. with the time left (batch 64): attention dropout 0, remat policies, XLA's default flags,
#     the head-overflow fallback.
# Output ($OUT, else ./gpu_session_out): session.log (all output), versions.json, checks.json,
# results.jsonl (the benchmark records: append them to bench/results.jsonl here), summary.md.
# Exit 0 when no part failed or timed out, 1 otherwise (the summary names them; parts skipped
# because the budget was spent are listed, not failed).
# Environment: PYTHON (default python3), OUT, D2V_SESSION_BUDGET_S (540), D2V_DRY_TIMEOUT_SCALE
# (6: the dry run's part timeouts are that many times the GPU ones), D2V_SESSION_PARTS
# (comma list of part names to run; default all), D2V_WHEELHOUSE (wheelhouse), D2V_SITE
# (/tmp/d2v_site).
set -u -o pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
ALLOW_CPU=0
for arg in "$@"; do
  case $arg in
    --allow-cpu) ALLOW_CPU=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_session.sh: error: unknown argument '$arg' (use --allow-cpu or --help)" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$REPO/gpu_session_out}
# Whole-session budget: the device's 10-minute command limit less a margin for the summary.
BUDGET=${D2V_SESSION_BUDGET_S:-540}
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/session.log") 2>&1
cd "$REPO" || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export D2V_BENCH_RESULTS=$OUT_DIR/results.jsonl
START=$SECONDS
FAILED=()
SUMMARY=()

# part NAME LIMIT_S CMD...: runs CMD under `timeout`, capped by what is left of the budget.
part() {
  local name=$1 limit=$2
  shift 2
  if [[ -n ${D2V_SESSION_PARTS:-} && ",$D2V_SESSION_PARTS," != *",$name,"* ]]; then
    SUMMARY+=("| $name | not selected | - |")
    return
  fi
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 30)); then
    echo "== $name: SKIPPED (session budget of ${BUDGET}s spent)"
    SUMMARY+=("| $name | skipped (budget) | - |")
    return
  fi
  # The dry run's CPU (2 shared cores, say) is far slower than the GPU machine the limits are for.
  ((ALLOW_CPU)) && limit=$((limit * ${D2V_DRY_TIMEOUT_SCALE:-6}))
  ((limit > left)) && limit=$left
  echo "== $name (timeout ${limit}s): $*"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@"
  rc=$?
  local verdict="ok"
  if ((rc == 124 || rc == 137)); then
    verdict="TIMEOUT"
  elif ((rc != 0)); then
    verdict="FAILED (exit $rc)"
  fi
  [[ $verdict == ok ]] || FAILED+=("$name")
  echo "== $name: $verdict in $((SECONDS - t0))s"
  SUMMARY+=("| $name | $verdict | $((SECONDS - t0)) s |")
}

# 1. Carried wheels, only for distributions the image's Python does not have.
SITE=${D2V_SITE:-/tmp/d2v_site}
wheels=()
for whl in "${D2V_WHEELHOUSE:-wheelhouse}"/*.whl; do
  [[ -e $whl ]] || continue
  dist=$(basename "$whl" | cut -d- -f1)
  if ! "$PY" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" 2>/dev/null; then
    wheels+=("$whl")
  fi
done
if ((${#wheels[@]})); then
  echo "== installing ${wheels[*]} into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" || { echo "gpu_session.sh: error: wheel install failed"; exit 1; }
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
  echo "== no wheel to install (wheelhouse/ empty or everything present)"
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c 'import ml_collections, tensorboardX, data2vec_jax.train.loop' 2>/dev/null; then
  "$PY" -c 'import ml_collections, tensorboardX, data2vec_jax.train.loop'
  echo "gpu_session.sh: error: the package does not import (missing wheels? run" \
    "bash bench/prepare_wheelhouse.sh here and carry wheelhouse)"
  exit 1
fi

# 2. Versions and devices.
part versions 120 "$PY" - "$OUT_DIR/versions.json" <<'PYEOF'
import importlib.metadata as m, json, platform, subprocess, sys
names = ["jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "flax",
         "optax", "orbax-checkpoint", "numpy", "ml-collections", "tensorboardX", "sentencepiece",
         "tokenizers", "safetensors", "torch", "transformers"]
info = {"python": platform.python_version(), "executable": sys.executable, "versions": {}}
for n in names:
  try:
    info["versions"][n] = m.version(n)
  except m.PackageNotFoundError:
    pass
import jax
info["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
import torch
info["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
try:
  info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"], capture_output=True, text=True, timeout=30).stdout
except (OSError, subprocess.SubprocessError) as e:
  info["nvidia_smi"] = f"unavailable: {e}"
print(json.dumps(info, indent=1))
json.dump(info, open(sys.argv[1], "w"), indent=1)
PYEOF

if ((ALLOW_CPU)); then
  export JAX_PLATFORMS=cpu
  CPU=(--allow-cpu)
  BENCH=(--allow-cpu --tiny --steps 2 --warmup 1 --timeout 600)
  # One compilation cache for the dry run's processes: on CPU the time is compiling, and the same
  # tiny programs recur (batch 2 in ratio and in largest_batch).
  export JAX_COMPILATION_CACHE_DIR=$OUT_DIR/jax_cache
  RATIO_BATCH=2
  LARGEST=2,4
  FRAMEWORKS=${D2V_DRY_FRAMEWORKS:-jax,torch}  # torch.compile on CPU: minutes of C++ builds
else
  CPU=()
  BENCH=(--steps 10 --warmup 2 --timeout 240)
  RATIO_BATCH=64
  LARGEST=128,256,512,1024
  FRAMEWORKS=jax,torch,torch_compile
fi

# 3. Correctness first: numbers from a wrong step are worth nothing.
part checks 240 "$PY" bench/gpu_checks.py "${CPU[@]}" --out "$OUT_DIR/checks.json"
# 4. The side-by-side ratio at the recipe's attention dropout.
part ratio 240 "$PY" bench/bench_gpu.py "${BENCH[@]}" --batch "$RATIO_BATCH" \
  --attention_dropout 0.1 --frameworks "$FRAMEWORKS" --note "gpu_session: side by side"
# 5. The largest batch (recipe dropout).
part largest_batch 240 "$PY" bench/bench_gpu.py "${BENCH[@]}" --batch "$LARGEST" \
  --note "gpu_session: largest batch"
# 6. Ablations, as far as the budget goes: dropout 0 (the student on cuDNN attention too),
# remat policies, XLA's default flags, the head-overflow fallback.
part attention_dropout_0 90 "$PY" bench/bench_gpu.py "${BENCH[@]}" --batch "$RATIO_BATCH" \
  --attention_dropout 0.0 --note "gpu_session: attention dropout 0"
part remat 150 "$PY" bench/bench_gpu.py "${BENCH[@]}" --batch "$RATIO_BATCH" \
  --remat dots_no_batch,full --note "gpu_session: remat"
part xla_flags_none 90 "$PY" bench/bench_gpu.py "${BENCH[@]}" --batch "$RATIO_BATCH" \
  --xla_flags none --note "gpu_session: XLA defaults"
part head_overflow_fallback 90 "$PY" bench/bench_gpu.py "${BENCH[@]}" --batch "$RATIO_BATCH" \
  --head_overflow fallback --note "gpu_session: lax.cond fallback"

# Summary: the parts, the checks, and the benchmark points.
{
  echo "# GPU session $(date -u +%Y-%m-%dT%H:%M:%SZ) ($((SECONDS - START)) s)"
  echo
  echo "| part | verdict | time |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  "$PY" - "$OUT_DIR" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
checks = os.path.join(out, "checks.json")
if os.path.exists(checks):
  record = json.load(open(checks))
  print(f"Checks on {record['device']} (jax {record['jax']}):\n")
  for c in record["checks"]:
    verdict = "skipped" if c.get("skipped") else ("ok" if c["ok"] else "FAIL")
    shown = {k: v for k, v in c.items() if k not in ("name", "ok", "traceback", "seconds")}
    print(f"- {c['name']}: {verdict} {json.dumps(shown)[:400]}")
  print()
results = os.path.join(out, "results.jsonl")
if os.path.exists(results):
  print("| note | framework | remat | attn dropout | batch | step s | tokens/s | MFU | peak GiB | JAX/PyTorch |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for line in open(results):
    rec = json.loads(line)
    for r in rec["results"]:
      if r.get("error"):
        what = "OOM" if r.get("oom") else "error: " + r["error"][:80]
        print(f"| {rec['note']} | {r.get('framework', 'jax')} | {r.get('remat')} | {r.get('attention_dropout')} | {r.get('batch')} | {what} | | | | |")
        continue
      ratios = ", ".join(f"{k[15:]} {v:.2f}" for k, v in r.items() if k.startswith("ratio_jax_over_"))
      mfu = f"{r['mfu']:.3f}" if r.get("mfu") is not None else "-"
      peak = f"{r['peak_bytes_in_use'] / 2**30:.1f}" if r.get("peak_bytes_in_use") else "-"
      print(f"| {rec['note']} | {r.get('framework', 'jax')} | {r.get('remat')} | {r.get('attention_dropout')} | {r['batch']} | {r['median_step_s']:.4f} | {r['tokens_per_s']:.0f} | {mfu} | {peak} | {ratios} |")
PYEOF
} >"$OUT_DIR/summary.md"
cat "$OUT_DIR/summary.md"
if ((${#FAILED[@]})); then
  echo "gpu_session.sh: failed parts: ${FAILED[*]}"
  exit 1
fi
echo "gpu_session.sh: all parts passed"
