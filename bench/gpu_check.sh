#!/usr/bin/env bash
# bench/gpu_check.py as one device call, from the repository root, with the
# git-ignored bench/gpu_assets (config + tokenizer files, from --prepare) and
# bench/gpu_wheels (the wheels its docstring lists) carried along:
#
#   bash bench/gpu_check.sh [extra gpu_check.py flags]
#
# The wheels go into a folder of their own, first on PYTHONPATH, so they win
# over the machine's versions without touching its site-packages; the project
# itself is imported from this checkout (no install). The JSON and the log land
# in $OUT (a temporary folder where $OUT is unset). Exit status: gpu_check.py's
# (1: a check failed), or 124 when the time limit cut it short.
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
python="${PYTHON:-python3}"
site=/tmp/canopy-gpu-site
if compgen -G "bench/gpu_wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" bench/gpu_wheels/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 8 minutes for the check; the script skips sections it cannot start by 7.
timeout --kill-after=15 "${GPU_CHECK_SECONDS:-480}" \
  "$python" bench/gpu_check.py --device cuda --budget-s 420 --out "$out/gpu_check.json" "$@" \
  2>&1 | tee "$out/gpu_check.log"
status=$?
echo "gpu_check: exit $status; JSON in $out/gpu_check.json" >&2
exit "$status"
