#!/usr/bin/env bash
# The first run on a machine with a GPU, in one command: the parity suites on every compiled backend (flex and the
# GPU), then the forward benchmark with the frozen weights in f32, f16 and bf16 on each backend that holds the dtype,
# printed as a table of medians.
#
#   bash scripts/gpu_check.sh                         # wgpu: Vulkan / Metal / DX12
#   PSA_GPU_FEATURES=cuda bash scripts/gpu_check.sh   # CUDA: needs the LLVM bundle at build time (book: precision.md)
#
# Logs and the table are written under $OUT (default target/gpu-check). Exit status: non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

features="${PSA_GPU_FEATURES:-wgpu}"
out="${OUT:-target/gpu-check}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/gpu-$features}"
mkdir -p "$out"

echo "== build and parity tests (--features $features)"
tests=(parity_llava parity_psa half_precision checkpointing host_lm_loss stage1)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
status=0
cargo test --release --features "$features" "${args[@]}" 2>&1 | tee "$out/tests.log" || status=$?
grep -E "^test result|FAILED|panicked" "$out/tests.log" || true

echo "== forward benchmark: f32 / f16 / bf16 on every backend"
cargo bench --features "$features" --bench forward -- --noplot 2>&1 | tee "$out/bench.log"

# Criterion prints `<name>` on one line (or before `time:`) and `time: [low median high]`; keep the median.
awk '
  /^[a-z0-9_-]+\/(f32|f16|bf16)\// { name = $1 }
  /time:/ {
    line = $0; sub(/.*time: *\[/, "", line); split(line, v, " ");
    if (name != "") { printf "| %s | %s %s |\n", name, v[3], v[4]; name = "" }
  }
' "$out/bench.log" > "$out/table.body"
{
  echo "| benchmark | median |"
  echo "|---|---|"
  cat "$out/table.body"
} > "$out/table.md"
rm -f "$out/table.body"
echo "== medians ($out/table.md)"
cat "$out/table.md"
exit "$status"
