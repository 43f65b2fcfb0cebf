#!/usr/bin/env bash
# Step bookkeeping for benchmarks/gpu_check.sh (sourced; tests/test_gpu_check.py sources it too).
# run_step NAME SECONDS LOG CMD...: runs CMD under `timeout SECONDS` with its output in "$out/LOG" (no pipe, so the
# status is the command's own), shows the log's tail, and appends "NAME<TAB>ok|FAILED (rc N)|TIMEOUT<TAB>Ns<TAB>LOG"
# to "$out/summary.tsv". finish_steps prints the summary and returns 1 when any step did not pass.
# The whole run has a budget (GPU_CHECK_BUDGET seconds, default 540: the device tool stops a command at 600): a step
# gets at most what is left, and a step with under 5 s left is recorded as SKIPPED, which counts as not passing.
# Needs $out set by the caller.

steps_failed=0

quiet() { grep -v -E "^USDT|CPUAllocator|Model config|FutureWarning|warnings.warn"; }

start_steps() {
  mkdir -p "$out"
  printf 'step\tstatus\tseconds\tlog\n' >"$out/summary.tsv"
  steps_failed=0
  steps_deadline=$((SECONDS + ${GPU_CHECK_BUDGET:-540}))
}

run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  echo "== $name"
  local started=$SECONDS rc status left=$((steps_deadline - SECONDS))
  if [ "$left" -lt 5 ]; then
    echo "!! step '$name': SKIPPED (the run's time budget is spent)"
    steps_failed=1
    printf '%s\t%s\t%s\t%s\n' "$name" "SKIPPED (budget)" 0 "$log" >>"$out/summary.tsv"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" >"$out/$log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    status=ok
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMEOUT after ${limit}s"
  else
    status="FAILED (rc $rc)"
  fi
  tail -n "${STEP_TAIL:-16}" "$out/$log" | quiet
  [ "$status" = ok ] || { echo "!! step '$name': $status (log: $out/$log)"; steps_failed=1; }
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - started))" "$log" >>"$out/summary.tsv"
  return 0
}

finish_steps() {
  echo "== summary ($out/summary.tsv)"
  column -t -s $'\t' "$out/summary.tsv" 2>/dev/null || cat "$out/summary.tsv"
  if [ "$steps_failed" -ne 0 ]; then
    echo "!! at least one step did not pass"
    return 1
  fi
  return 0
}
