#!/usr/bin/env bash
# radimagenet-jax on a Cloud TPU VM pod slice: create the slice (or reuse it), install this
# checkout on every worker, run one radimagenet-jax command on all workers at once.
#
#   ZONE=us-central2-b launch/tpu_pod.sh [--dry-run] [--skip-install] -- \
#       pretrain --config=configs/pretrain.py:radimagenet --workdir=/mnt/BUCKET/runs/r50
#
# --dry-run       print every gcloud/tar command instead of running it
# --skip-install  reuse what an earlier run installed on the workers
# Settings (environment variables; edit the defaults to taste):
#   TPU_NAME          slice name                          (default radimagenet-jax)
#   ZONE              zone of the slice                   (required)
#   PROJECT           GCP project                         (default: gcloud's configured project)
#   ACCELERATOR_TYPE  slice type, e.g. v4-32, v5p-64      (default v4-32: 4 workers)
#   RUNTIME_VERSION   TPU VM image                        (default tpu-ubuntu2204-base)
#   SPOT              1: a spot slice                     (default 0)
#   JAX_PIP           the jax to install                  (default 'jax[tpu]')
#   TFDS_DATA_DIR     data dir on the workers (default ~/tensorflow_datasets: local to each worker,
#                     so a missing dataset is built once per worker; a shared mount is built once)
# The workdir must be a path all workers reach (a bucket mounted with Cloud Storage FUSE on every
# worker, Filestore, NFS; a gs:// URL is refused): checkpoints are written by every worker.
# Re-running the same command resumes from the workdir; a slice that was preempted (state
# PREEMPTED/TERMINATED) is deleted and created again first.
set -euo pipefail
usage="usage: $0 [--dry-run] [--skip-install] -- <radimagenet-jax command and flags>"
dry_run=0; install=1
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --skip-install) install=0 ;;
    *) echo "$0: unknown option $1; $usage" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 2 ]]; then
  echo "$usage" >&2
  exit 2
fi
shift  # the --

TPU_NAME=${TPU_NAME:-radimagenet-jax}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
SPOT=${SPOT:-0}
JAX_PIP=${JAX_PIP:-jax[tpu]}
TFDS_DATA_DIR=${TFDS_DATA_DIR:-'$HOME/tensorflow_datasets'}  # expanded on the workers
if [[ -z "$ZONE" ]]; then
  echo "$0: ZONE is not set; expected the zone of the TPU slice, e.g. ZONE=us-central2-b" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
remote_dir='$HOME/radimagenet-jax'          # checkout on each worker (expanded there)
remote_venv='$HOME/radimagenet-jax-venv'    # its virtualenv
where=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && where+=(--project="$PROJECT")

run() {  # prints the command; runs it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ((dry_run == 0)); then "$@"; fi
}

# 1. The slice: reuse a READY one, replace a preempted one, create a missing one.
state=""
if ((dry_run)); then
  run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${where[@]}" --format='value(state)'
  echo "# (only if the slice does not exist yet, or was preempted:)"
else
  printf '+ gcloud compute tpus tpu-vm describe %q ...\n' "$TPU_NAME"
  state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${where[@]}" --format='value(state)' \
          2>/dev/null) || state=""
  echo "slice $TPU_NAME: ${state:-absent}"
fi
if [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet
  state=""
fi
if [[ -z "$state" ]]; then
  create=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}"
          --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  ((SPOT)) && create+=(--spot)
  run "${create[@]}"
fi

# 2. Install this checkout (without .git, runs/, caches) on every worker.
if ((install)); then
  tarball=${TMPDIR:-/tmp}/radimagenet-jax-$$.tgz
  run tar -czf "$tarball" -C "$repo" --exclude=.git --exclude=runs --exclude=.pytest_tfds \
      --exclude=.pytest_cache --exclude='*.egg-info' --exclude=__pycache__ --exclude=.venv .
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:radimagenet-jax.tgz" "${where[@]}" \
      --worker=all
  setup="set -e; rm -rf \"$remote_dir\"; mkdir -p \"$remote_dir\""
  setup+="; tar -xzf \"\$HOME/radimagenet-jax.tgz\" -C \"$remote_dir\""
  setup+="; [ -d \"$remote_venv\" ] || python3 -m venv \"$remote_venv\""
  setup+="; . \"$remote_venv/bin/activate\"; pip install -q -U pip"
  setup+="; pip install -q $(printf %q "$JAX_PIP") -e \"$remote_dir[demo]\""
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$setup"
  ((dry_run)) || rm -f "$tarball"
fi

# 3. The command, on all workers at once (RADIMAGENET_JAX_DISTRIBUTED=1: every worker joins one
# jax.distributed job; jax finds the workers in the TPU VM metadata).
args=""
for a in "$@"; do args+=" $(printf %q "$a")"; done
command="cd \"$remote_dir\" && . \"$remote_venv/bin/activate\" && RADIMAGENET_JAX_DISTRIBUTED=1"
command+=" TFDS_DATA_DIR=\"$TFDS_DATA_DIR\" radimagenet-jax$args"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$command"
