#!/usr/bin/env bash
# GPU check of nnunet_joint on one CUDA machine (docs/gpu.md): installs the package into a fresh
# virtual environment, then runs benchmarks/gpu_check.py (training iterations/s of ours vs plain
# nnU-Net, peak GPU memory, predict seconds per 512x512 slice with and without mirroring, the
# full matrix's GPU-hours). About 10 minutes on one modern GPU, most of it installing and
# preparing the phantom data.
#
#   benchmarks/gpu_check.sh [WORK_DIR] [gpu_check.py options, e.g. --phantom default]
#
# GPU_CHECK_PYTHON=/path/to/python uses that interpreter (nnunet_joint installed) instead of a
# new virtual environment, e.g. on a machine without internet access.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-${TMPDIR:-/tmp}/nnunet_joint_gpu_check}"
shift || true

# Fail fast, before installing anything, where no NVIDIA GPU is visible.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    echo "error: gpu_check: no CUDA device (nvidia-smi lists no GPU): run this on a machine with an NVIDIA GPU" >&2
    exit 2
fi
nvidia-smi -L

mkdir -p "$work"
if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    python="$GPU_CHECK_PYTHON"
else
    python3 -m venv "$work/venv"
    python="$work/venv/bin/python"
    echo "installing nnunet_joint into $work/venv (log: $work/install.log) ..."
    "$python" -m pip install -q --upgrade pip >"$work/install.log" 2>&1
    if ! "$python" -m pip install -e "$repo" >>"$work/install.log" 2>&1; then
        echo "error: $work/install.log: pip install failed" >&2
        exit 1
    fi
fi

export nnUNet_def_n_proc="${nnUNet_def_n_proc:-$(nproc)}"
exec "$python" -u "$repo/benchmarks/gpu_check.py" --work "$work" "$@"
