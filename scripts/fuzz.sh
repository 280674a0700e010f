#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS seconds (default 60) on the nightly toolchain, seeded from
# fuzz/seeds/<target> and the fixture folders listed in fuzz/seeds.txt, and prints executions and crashes per
# target (a run stops at a target's first crash). Crashing inputs land in fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/ once fixed,
# so tests/fuzz_regressions.rs replays it on stable.
#
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz` (0.13). Builds into $FUZZ_TARGET_DIR
# (default ~/.cache/psa-vlm/target-fuzz) without a sanitizer: panics, overflows (debug assertions are on) and
# allocations over -malloc_limit_mb are what it finds.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/psa-vlm/target-fuzz}"
cd "$root/fuzz"
cargo +nightly fuzz build -s none
printf '| target | seconds | executions | exec/s | corpus | crashes |\n|---|---|---|---|---|---|\n'
for target in gguf onnx safetensors_header jsonl policy http_body; do
    corpus="corpus/$target"
    mkdir -p "$corpus" "artifacts/$target"
    seeds=()
    [[ -d "seeds/$target" ]] && seeds+=("seeds/$target")
    while read -r t dir; do
        [[ "$t" == "$target" ]] && seeds+=("$root/$dir")
    done < seeds.txt
    log="$(mktemp)"
    # A run stops at its first crash, which is written to artifacts/<target>/.
    cargo +nightly fuzz run -s none "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -malloc_limit_mb=2048 -max_len=262144 \
        -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || true
    execs="$(grep -o 'number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
    crashes="$(find "artifacts/$target" -type f | wc -l)"
    files="$(find "$corpus" -type f | wc -l)"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$target" "$seconds" "$execs" "$((execs / seconds))" "$files" "$crashes"
    rm -f "$log"
done
