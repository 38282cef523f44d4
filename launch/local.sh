#!/usr/bin/env bash
# Runs one radimagenet-jax command as N JAX processes on this machine (CPU devices, gloo
# collectives): the multi-host code path without a cluster.
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS -- pretrain --config=configs/pretrain.py:tiny --workdir=runs/mp
#
# Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which
# radimagenet_jax.distributed.initialize() passes to jax.distributed.initialize(). Logs of process i
# go to ${LOG_DIR:-/tmp/radimagenet_jax_local}/process_i.log; process 0 also prints to the console.
set -euo pipefail
if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- <radimagenet-jax command and flags>" >&2
  exit 2
fi
num_processes=$1; devices=$2; shift 3
port=${PORT:-$((20000 + RANDOM % 20000))}
log_dir=${LOG_DIR:-/tmp/radimagenet_jax_local}
mkdir -p "$log_dir"
pids=()
for ((i = 0; i < num_processes; i++)); do
  env JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$num_processes" \
      JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
      XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
      python -m radimagenet_jax.cli "$@" > "$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f "$log_dir/process_0.log" & tail_pid=$!
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
kill "$tail_pid" 2>/dev/null || true
if [[ $status -ne 0 ]]; then
  echo "a process failed (exit $status); logs in $log_dir" >&2
fi
exit $status
