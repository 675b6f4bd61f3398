#!/usr/bin/env bash
# Base vs distilled comparison for a configured run: reads the run config to find the student and
# its final adapter, then runs kd compare on the run's eval data (or train data).
# Usage: Scripts/run_kd_inference_test.sh quick|medium|full TEMPERATURE[,T2,...] [RUN.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: $0 quick|medium|full TEMPERATURE [RUN.yaml]}
temperature=${2:?usage: $0 quick|medium|full TEMPERATURE [RUN.yaml]}
config=${3:-Configs/demo.yaml}
kd=${KD:-.build/release/kd}
[ -x "$kd" ] || swift build -c release >/dev/null
# The effective config values, through kd itself (so defaults and --set rules are the same).
value() { $kd config --config "$config" --get "$1"; }
student=$(value student.path)
output=$(value run.output_dir)
data=$(value data.eval)
[ "$data" = "null" ] && data=$(value data.train)
mkdir -p "$output"
$kd compare --base "$student" --adapter "$output/final_model" --data "$data" --mode "$mode" \
  --temperature "$temperature" --output "$output/compare-$mode-$temperature.json"
