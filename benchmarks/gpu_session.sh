#!/usr/bin/env bash
# The accelerator figures the README still lacks, in one call on a GPU host, each part with its own
# time limit and its figures printed as soon as they are measured (README "Accelerator"):
#   1. our bf16 train step of DenseNet121 and Inception-ResNet-v2 (state init, compile, images/s;
#      XLA's compile-pass log in OUT_DIR/xla) since the random init moved to the host;
#   2. torch.compile for InceptionV3, DenseNet121 and Inception-ResNet-v2;
#   3. the projected wall time of the paper's 240-run BUSI sweep (benchmarks/sweep.py --quick);
#   4. the input pipeline with 15 grain workers, augmentation and preprocessing in the step.
#
#   benchmarks/gpu_session.sh [OUT_DIR]     (about 11 minutes of limits; OUT_DIR default $OUT or .)
#
# Needs jax with GPU support, flax, optax, torch/torchvision/timm for part 2, and grain,
# tensorflow-datasets, array_record for part 4 (a part whose imports fail prints the error and the
# next part runs). PYTHON picks the interpreter (default python3).
set -uo pipefail
out=${1:-${OUT:-.}}
mkdir -p "$out"
export RADIMAGENET_JAX_CACHE=none PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."

part() {  # part LIMIT_S COMMAND...: runs it with a limit, XLA/absl log lines filtered out
  local limit=$1; shift
  echo "== $(date -u +%H:%M:%S) $* (limit ${limit} s)" | tee -a "$out/gpu_session.log"
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v -E '^[WIE][0-9]{4} ' | tee -a "$out/gpu_session.log"
  echo "== exit ${PIPESTATUS[0]}" | tee -a "$out/gpu_session.log"
}

part 200 "$py" benchmarks/accelerator.py --models densenet121,inception_resnet_v2 --torch '' \
  --timeout 95 --xla_log_dir "$out/xla"
part 150 "$py" benchmarks/accelerator.py --models inception_v3,densenet121,inception_resnet_v2 \
  --no_ours --torch compile --timeout 48
part 230 "$py" benchmarks/sweep.py --project --quick
part 100 "$py" benchmarks/input_pipeline.py --num_images 768 --batch_size 128 --workers 15
