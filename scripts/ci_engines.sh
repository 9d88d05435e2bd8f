#!/usr/bin/env bash
# trtq engines in CI, for any CI system (GitHub Actions: .github/workflows/engines.yml).
#
#   scripts/ci_engines.sh cpu [CONFIG]   calibrate, export and evaluate: any runner, no GPU
#   scripts/ci_engines.sh gpu [CONFIG]   everything, with build, bench and report: a runner with an NVIDIA
#                                        GPU and TensorRT; the CPU job's artifacts, downloaded into the output
#                                        folder first, are reused (calibrate only re-writes the cache header)
#
# CONFIG: a trtq.toml, or a pyproject.toml with [tool.trtq] [default: ./trtq.toml, else ./pyproject.toml].
# Environment:
#   TRTQ_OUTPUT           artifacts folder [default: trtq-artifacts]
#   PYTHON                interpreter that has trtq installed [default: python3]
#   TRTQ_ARGS             more arguments for `trtq run`, e.g. --force
#   GITHUB_STEP_SUMMARY   when set (GitHub Actions sets it), the Markdown summary is appended to it
# Exit status is trtq run's: 0 ok, 2 bad config or no GPU in gpu mode, 3 a gate failed, 4 a step failed.
set -euo pipefail

usage() {
    sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

mode=${1:-}
config=${2:-}
case "$mode" in
    cpu) mode_args=(--steps cpu) ;;
    gpu) mode_args=(--steps all --require-gpu) ;;
    *) usage ;;
esac

python=${PYTHON:-python3}
output=${TRTQ_OUTPUT:-trtq-artifacts}
args=(run)
if [ -n "$config" ]; then
    args+=("$config")
fi
args+=(--output "$output" "${mode_args[@]}")
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    args+=(--step-summary "$GITHUB_STEP_SUMMARY")
fi
read -r -a extra <<< "${TRTQ_ARGS:-}"  # split into words, without expanding wildcards

echo "trtq ci ($mode): $python -m trtq ${args[*]} ${extra[*]:-}" >&2
exec "$python" -m trtq "${args[@]}" ${extra[@]+"${extra[@]}"}
