#!/usr/bin/env bash
# Proof on a real GPU in about five minutes (issue 11), or its CPU rehearsal.
#
#   bench/gpu_proof.sh [--rehearse] [--out DIR] [--strategy NAME]... [--parts a,b] [--budget S]
#
# Writes DIR/gpu_proof.json and DIR/gpu_proof.log (DIR: --out, else $OUT, else bench/out/gpu_proof) and
# exits 0 when it ran to its end; a failed part is reported in the JSON, not by the exit code. First it
# installs, from the wheel folder .whl/ (bench/prepare_gpu_wheels.sh makes it), only the packages this
# Python lacks (bench/gpu_wheels.py), into a temporary folder put on PYTHONPATH with the checkout's
# source roots, so it runs on a lent machine's own Python as well as on this repository's .venv.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x "$repo/.venv/bin/python" ]; then
  py=$repo/.venv/bin/python
else
  py=python3
fi
site=$(mktemp -d /tmp/cryptotune-site-XXXXXX)
trap 'rm -rf "$site"' EXIT
"$py" "$repo/bench/gpu_wheels.py" --wheels "$repo/.whl" --target "$site" \
  || echo "gpu_proof.sh: installing wheels from .whl failed; the parts that need them will report it" >&2
export PYTHONPATH="$site:$repo/client:$repo/daemon${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TRANSFORMERS_VERBOSITY=error
"$py" "$repo/bench/gpu_proof.py" "$@"
