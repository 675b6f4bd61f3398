#!/usr/bin/env bash
# Fuzzes the parsers of kd's input files with libFuzzer and AddressSanitizer: the safetensors
# header, config.json, the run YAML (with --set overrides), JSON Lines records and datasets,
# tokenizer.json, PEFT adapters and trainer_state.json (`kd-fuzz list`).
#
#   Scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 60 seconds for each of every target)
#
# kd-fuzz is built in debug (overflow and bounds checks on) with the fuzzer's coverage
# instrumentation and ASan into its own scratch path (.build/fuzz), so the normal build is left
# alone. Each target starts from seeds made from the committed fixtures and keeps what it finds
# interesting in .build/fuzz/work/corpus/TARGET (reused by the next run). Crashes, timeouts and
# out-of-memory inputs are kept in .build/fuzz/work/artifacts/TARGET, what each was in
# .build/fuzz/work/logs/TARGET/failures.txt; replay one with
#   .build/fuzz/debug/kd-fuzz TARGET FILE        (or with the normal build: .build/release/kd-fuzz TARGET FILE)
# libFuzzer stops at a crash; the script starts it again (on the grown corpus) until the target's
# time is up, so one run can report several crashes. It exits 1 when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: Scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }
shift $(( $# > 0 ? 1 : 0 ))

Scripts/setup.sh
swift_bin=$(dirname "$(readlink -f "$(command -v swift)")")
runtime="$swift_bin/../lib/swift/clang/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a"
[ -f "$runtime" ] || { echo "fuzz.sh: $runtime not found (the Swift toolchain's libFuzzer)" >&2; exit 2; }

# -sanitize=fuzzer only on the frontend (coverage instrumentation); the driver would also link
# libFuzzer's main, which clashes with the entry point SwiftPM gives executables, so kd-fuzz
# links libFuzzer without its main and starts it itself (LLVMFuzzerRunDriver).
echo "building kd-fuzz with libFuzzer and AddressSanitizer (.build/fuzz)" >&2
swift build -c debug --product kd-fuzz --scratch-path .build/fuzz \
  -Xswiftc -sanitize=address -Xswiftc -Xfrontend -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING \
  -Xlinker "$runtime" -Xlinker -lstdc++ 2>&1 | grep -v "Cannot export local symbol" | tail -5
fuzzer=.build/fuzz/debug/kd-fuzz
work=.build/fuzz/work

export ASAN_OPTIONS="detect_leaks=0"
# Swift's own crash handler reads memory ASan then reports; libFuzzer and ASan print the stack.
export SWIFT_BACKTRACE="enable=no"
export KD_FUZZ_ROOT="$PWD"
export KD_FUZZ_SCRATCH="$PWD/$work/scratch"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <("$fuzzer" list); fi
rm -rf "$work/seeds"
"$fuzzer" seeds "$work/seeds" >/dev/null
failed=0
summary=()
for target in "${targets[@]}"; do
  corpus="$work/corpus/$target" artifacts="$work/artifacts/$target" logs="$work/logs/$target"
  rm -rf "$logs" "$KD_FUZZ_SCRATCH"
  mkdir -p "$corpus" "$artifacts" "$logs" "$KD_FUZZ_SCRATCH"
  start=$(date +%s) deadline=$(( $(date +%s) + seconds )) runs=0 crashes=0 executions=0
  echo "fuzzing $target for $seconds s (log: $logs)" >&2
  # libFuzzer stops at the first crash: start it again on the grown corpus until the time is up.
  while :; do
    left=$(( deadline - $(date +%s) ))
    [ $runs -gt 0 ] && [ $left -le 0 ] && break
    runs=$(( runs + 1 ))
    log="$logs/run-$runs.log"
    set +e
    # The seeds directory is only read; new inputs go to the corpus directory.
    "$fuzzer" "$target" "$corpus" "$work/seeds/$target" -max_total_time=$(( left > 1 ? left : 1 )) -timeout=10 \
      -rss_limit_mb=4096 -detect_leaks=0 -dict="$work/seeds/$target.dict" -artifact_prefix="$artifacts/" \
      -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    executions=$(( executions + $(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0) ))
    [ $status -eq 0 ] && break
    crashes=$(( crashes + 1 ))
    # What failed: libFuzzer's or the sanitizer's one line, Swift's fatal error, the first frame in kd.
    {
      grep -m1 -hE 'ERROR: (libFuzzer|AddressSanitizer)' "$log" | sed -E 's/^==[0-9]+== ?//' || true
      grep -m1 -hE 'Fatal error: ' "$log" || true
      grep -m1 -oE '/Sources/KD(Core|Models|Text|Train)/[^ ]+' "$log" | sed -E 's#.*/Sources/#at #' || true
      grep -m1 -hE "Test unit written to" "$log" | sed -E 's/.*Test unit written to /input: /'
      true  # a grep that finds nothing is not an error here
    } | sed 's/^/    /' | tee -a "$logs/failures.txt" >&2
    [ "$(date +%s)" -ge $deadline ] && break
  done
  elapsed=$(( $(date +%s) - start ))
  summary+=("$(printf '%-14s %12s %8s %8s  %s' "$target" "$executions" "$elapsed" "$crashes" "$artifacts")")
  [ $crashes -gt 0 ] && failed=1
done
rm -rf "$KD_FUZZ_SCRATCH"
printf '%-14s %12s %8s %8s  %s\n' target executions seconds crashes artifacts
printf '%s\n' "${summary[@]}"
[ $failed -eq 0 ] || echo "crashes: details in $work/logs/TARGET/failures.txt; replay an input with $fuzzer TARGET FILE" >&2
exit $failed
