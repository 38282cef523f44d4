#!/usr/bin/env bash
# Runs one radimagenet-jax command as N JAX processes on this machine (CPU devices, gloo
# collectives): the multi-host code path without a cluster.
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS -- pretrain --config=configs/pretrain.py:tiny --workdir=runs/mp
#
# Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which
# radimagenet_jax.distributed.initialize() passes to jax.distributed.initialize().
# Environment:
#   PORT     coordinator port (default: a random one in 20000-39999)
#   LOG_DIR  process i writes ${LOG_DIR:-/tmp/radimagenet_jax_local}/process_i.log and its pid to
#            process_i.pid; process 0's log is also followed on the console. The logs of an
#            earlier attempt found there (a preempted run being resumed) are first moved to
#            LOG_DIR/attempt_<k>/ (k = 1, 2, ...), never overwritten
#   PYTHON   the interpreter (default: python; e.g. a virtualenv's bin/python)
# SIGTERM or Ctrl-C to this script is passed on to every process (the training engine then saves a
# checkpoint at the next step and exits with 143; re-run the same command to resume). Exit status:
# 0 when every process succeeded, else that of the first process that failed; 143 with every
# process stopped by SIGTERM is reported as a stop, not a failure.
set -euo pipefail
if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- <radimagenet-jax command and flags>" >&2
  exit 2
fi
num_processes=$1; devices=$2; shift 3
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: NUM_PROCESSES=$num_processes and DEVICES_PER_PROCESS=$devices: expected positive" \
       "integers" >&2
  exit 2
fi
port=${PORT:-$((20000 + RANDOM % 20000))}
log_dir=${LOG_DIR:-/tmp/radimagenet_jax_local}
python=${PYTHON:-python}
mkdir -p "$log_dir"
shopt -s nullglob
previous=("$log_dir"/process_*.log "$log_dir"/process_*.pid)
shopt -u nullglob
if ((${#previous[@]} > 0)); then
  attempt=1
  while [[ -e "$log_dir/attempt_$attempt" ]]; do attempt=$((attempt + 1)); done
  mkdir "$log_dir/attempt_$attempt"
  mv -- "${previous[@]}" "$log_dir/attempt_$attempt/"
  echo "$0: moved the previous attempt's logs to $log_dir/attempt_$attempt" >&2
fi
pids=()
for ((i = 0; i < num_processes; i++)); do
  env JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$num_processes" \
      JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
      XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
      "$python" -m radimagenet_jax.cli "$@" > "$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
  echo $! > "$log_dir/process_$i.pid"
done
forward() { kill -"$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT
tail -n +1 -f --pid=$$ "$log_dir/process_0.log" & tail_pid=$!
trap 'kill "$tail_pid" 2>/dev/null || true' EXIT
status=0
other_failure=0   # a process that exited with a status other than 0 and 143 (SIGTERM)
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  finished=""
  rc=0
  wait -n -p finished "${running[@]}" || rc=$?
  if [[ -z "${finished:-}" ]]; then
    # A forwarded signal interrupted the wait, or bash had already collected the process.
    for pid in "${running[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        finished=$pid
        rc=0
        wait "$pid" 2>/dev/null || rc=$?
        break
      fi
    done
    [[ -z "${finished:-}" ]] && continue
  fi
  still=()
  for pid in "${running[@]}"; do [[ "$pid" != "${finished:-}" ]] && still+=("$pid"); done
  running=("${still[@]}")
  if [[ $rc -ne 0 ]]; then
    [[ $status -eq 0 ]] && status=$rc
    [[ $rc -ne 143 ]] && other_failure=1
    for ((i = 0; i < num_processes; i++)); do
      if [[ "${pids[$i]}" == "${finished:-}" ]]; then
        echo "process $i exited with status $rc (log: $log_dir/process_$i.log)" >&2
      fi
    done
  fi
done
kill "$tail_pid" 2>/dev/null || true
if [[ $status -eq 143 && $other_failure -eq 0 ]]; then
  echo "stopped by SIGTERM (preempted or stopped, not failed: exit 143); re-run the same command" \
       "to resume from the last checkpoint (logs in $log_dir)" >&2
elif [[ $status -ne 0 ]]; then
  echo "a process failed (exit $status); logs in $log_dir" >&2
fi
exit $status
