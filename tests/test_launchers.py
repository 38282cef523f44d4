"""The launchers in launch/, run without a cluster.

- slurm.sbatch runs as a plain bash script with the variables SLURM sets in a batch job and stub
  `srun` / `scontrol` commands first on PATH: the stub srun starts SLURM_NTASKS local copies of the
  command with the per-task variables (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST), and a
  stand-in `radimagenet-jax` in a stand-in virtualenv reports what jax.distributed made of them.
- tpu_pod.sh runs with a stub `gcloud` that records its arguments; the recorded remote command is
  then run locally against a stand-in worker home to check its quoting.
- local.sh forwards SIGTERM to every process and reports each failing one (with a stand-in PYTHON).
"""
import os
import random
import shlex
import signal
import stat
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(REPO, "launch", "slurm.sbatch")
TPU_POD = os.path.join(REPO, "launch", "tpu_pod.sh")
LOCAL_SH = os.path.join(REPO, "launch", "local.sh")
_DROP_ENV = ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
             "RADIMAGENET_JAX_DISTRIBUTED", "TFDS_DATA_DIR")

_SRUN = r"""#!/usr/bin/env bash
# Stand-in for srun: records its arguments, starts SLURM_NTASKS copies of the command here.
echo "srun $*" >> "$STUB_LOG"
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST SLURM_STEP_ID=0 \
  SLURM_STEP_NUM_NODES=$SLURM_JOB_NUM_NODES "$@" > "$STUB_DIR/task_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$STUB_LOG"
"""
_GCLOUD = """#!/usr/bin/env bash
# Stand-in for gcloud: one line per call, the arguments as a Python list; `describe` answers
# $STUB_TPU_STATE (empty: the slice does not exist).
python3 -c 'import sys; print(repr(sys.argv[1:]))' "$@" >> "$STUB_LOG"
if [[ "$*" == *" describe "* ]]; then
  [[ -n "${STUB_TPU_STATE:-}" ]] || { echo "ERROR: NOT_FOUND" >&2; exit 1; }
  echo "$STUB_TPU_STATE"
fi
"""
# The stand-in CLI: exits with $FAKE_EXIT if set, else joins the job the way the real CLI does.
_FAKE_CLI = """#!/usr/bin/env bash
echo "venv=${FAKE_VENV_ACTIVE:-no} cwd=$PWD local_device_ids=${JAX_LOCAL_DEVICE_IDS:-}" \
     "distributed=${RADIMAGENET_JAX_DISTRIBUTED:-} tfds=${TFDS_DATA_DIR:-}"
printf 'arg=%s\\n' "$@"
if [[ -n "${FAKE_EXIT:-}" ]]; then exit "$FAKE_EXIT"; fi
exec python -c '
import jax
from radimagenet_jax import distributed
distributed.initialize()
print(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices")
'
"""


def _write(path, text, executable=True):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  if executable:
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def _fake_venv(root):
  """A directory with bin/activate (puts bin/ first on PATH) and a stand-in radimagenet-jax."""
  _write(os.path.join(root, "bin", "activate"),
         f'export FAKE_VENV_ACTIVE=1\nexport PATH="{root}/bin:$PATH"\n', executable=False)
  _write(os.path.join(root, "bin", "radimagenet-jax"), _FAKE_CLI)
  return str(root)


def _env(tmp_path, **extra):
  env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith("SLURM_")}
  stubs = tmp_path / "stubs"
  _write(str(stubs / "srun"), _SRUN)
  _write(str(stubs / "scontrol"), _SCONTROL)
  _write(str(stubs / "gcloud"), _GCLOUD)
  # this interpreter's bin/ next: the stand-ins' `python` is the one running the tests, venv
  # activated or not
  path = os.pathsep.join([str(stubs), os.path.dirname(sys.executable), env["PATH"]])
  env.update(PATH=path, STUB_LOG=str(tmp_path / "calls.log"),
             STUB_DIR=str(tmp_path), JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _slurm_env(tmp_path, ntasks, per_node, **extra):
  return _env(tmp_path, SLURM_JOB_ID=random.randint(10_000, 999_999), SLURM_JOB_NAME="rij-test",
              SLURM_NTASKS=ntasks, SLURM_NTASKS_PER_NODE=per_node, SLURM_JOB_NUM_NODES=1,
              SLURM_JOB_NODELIST="localhost", SLURM_SUBMIT_DIR=REPO,
              VENV=_fake_venv(tmp_path / "venv"), WORKDIR=tmp_path / "work",
              TFDS_DATA_DIR=tmp_path / "tfds", **extra)


def _calls(tmp_path):
  path = tmp_path / "calls.log"
  return path.read_text().splitlines() if path.exists() else []


def _args(output):
  """The arguments the stand-in CLI received (its 'arg=' lines)."""
  return [line[4:] for line in output.splitlines() if line.startswith("arg=")]


def _task_log(tmp_path, i):
  return (tmp_path / f"task_{i}.log").read_text()


def test_slurm_script_starts_one_jax_job_over_all_tasks(tmp_path):
  env = _slurm_env(tmp_path, 2, 2, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   EXTRA_ARGS="--config.batch_size=16 --config.dtype=bfloat16",
                   RADIMAGENET_JAX_HEARTBEAT_TIMEOUT=10)
  result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=300)
  logs = [_task_log(tmp_path, i) for i in range(2)]
  assert result.returncode == 0, result.stdout + result.stderr + "".join(logs)
  assert "2 process(es) on 1 node(s) localhost" in result.stdout
  for i, log in enumerate(logs):
    assert f"process {i} of 2, 4 devices" in log, log  # one jax job: 2 processes x 2 devices
    assert f"venv=1 cwd={REPO} local_device_ids= " in log
    assert f"tfds={tmp_path / 'tfds'}" in log
    assert _args(log) == ["pretrain", "--config=configs/pretrain.py:radimagenet",
                          f"--workdir={tmp_path / 'work'}", "--config.batch_size=16",
                          "--config.dtype=bfloat16"], log
  assert (tmp_path / "work").is_dir()
  calls = _calls(tmp_path)
  assert len(calls) == 1 and calls[0].startswith("srun --label radimagenet-jax pretrain")


def test_slurm_script_requeues_the_job_after_a_sigterm_stop(tmp_path):
  env = _slurm_env(tmp_path, 2, 2, FAKE_EXIT=143, SLURM_RESTART_COUNT=3)
  result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 143
  assert "(start 4)" in result.stdout and "requeueing job" in result.stdout
  assert _calls(tmp_path)[-1] == f"scontrol requeue {env['SLURM_JOB_ID']}"


def test_slurm_script_stops_requeueing_after_max_requeues(tmp_path):
  env = _slurm_env(tmp_path, 2, 2, FAKE_EXIT=143, SLURM_RESTART_COUNT=2, MAX_REQUEUES=2)
  result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 143
  assert "not requeued: already restarted 2 times (MAX_REQUEUES=2)" in result.stderr
  assert not any(c.startswith("scontrol") for c in _calls(tmp_path))


def test_slurm_script_does_not_requeue_a_failed_run(tmp_path):
  env = _slurm_env(tmp_path, 2, 2, FAKE_EXIT=1)
  result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert not any(c.startswith("scontrol") for c in _calls(tmp_path))


def test_slurm_script_gives_one_process_per_node_every_gpu_of_the_node(tmp_path):
  env = _slurm_env(tmp_path, 1, 1, FAKE_EXIT=0, SLURM_GPUS_ON_NODE=4)
  result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert "local_device_ids=0,1,2,3 " in _task_log(tmp_path, 0)


def test_slurm_script_names_a_missing_virtualenv(tmp_path):
  env = _slurm_env(tmp_path, 2, 2)
  env["VENV"] = str(tmp_path / "nowhere")
  result = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert f"VENV={tmp_path / 'nowhere'}: no bin/activate there" in result.stderr
  assert not _calls(tmp_path)


_RUN_ARGS = ["pretrain", "--config=configs/pretrain.py:tiny", "--workdir=/mnt/bucket/runs/a b",
             "--config.learning_rate=3e-4"]


def _tpu(tmp_path, *options, **extra):
  env = _env(tmp_path, ZONE="us-central2-b", TPU_NAME="rij-test", **extra)
  return subprocess.run(["bash", TPU_POD, *options, "--", *_RUN_ARGS], env=env,
                        capture_output=True, text=True, timeout=120)


def _gcloud_calls(tmp_path):
  import ast
  return [ast.literal_eval(line) for line in _calls(tmp_path)]


def _option(call, name):
  return next(a.split("=", 1)[1] for a in call if a.startswith(f"--{name}="))


def test_tpu_pod_creates_a_missing_slice_installs_and_runs_on_all_workers(tmp_path):
  result = _tpu(tmp_path, ACCELERATOR_TYPE="v5p-16", SPOT=1, PROJECT="my-project")
  assert result.returncode == 0, result.stdout + result.stderr
  calls = _gcloud_calls(tmp_path)
  assert [c[:4] for c in calls] == [["compute", "tpus", "tpu-vm", verb] for verb in
                                    ("describe", "create", "scp", "ssh", "ssh")]
  where = ["--zone=us-central2-b", "--project=my-project"]
  describe, create, scp, install, run = calls
  assert describe[4] == "rij-test" and describe[5:7] == where
  assert create[4:] == ["rij-test", *where, "--accelerator-type=v5p-16",
                        "--version=tpu-ubuntu2204-base", "--spot"]
  assert scp[5] == "rij-test:radimagenet-jax.tgz" and "--worker=all" in scp
  assert not os.path.exists(scp[4])  # the local tarball is removed after the copy
  for call in (install, run):
    assert call[4] == "rij-test" and "--worker=all" in call and call[5:7] == where
  setup = _option(install, "command")
  assert 'python3 -m venv "$HOME/radimagenet-jax-venv"' in setup
  assert "pip install -q jax\\[tpu\\] -e \"$HOME/radimagenet-jax[demo]\"" in setup

  # The remote command, run by a shell in a stand-in worker home, gets the arguments intact.
  home = tmp_path / "home"
  (home / "radimagenet-jax").mkdir(parents=True)
  _fake_venv(home / "radimagenet-jax-venv")
  out = subprocess.run(["bash", "-c", _option(run, "command")], capture_output=True, text=True,
                       env=dict(os.environ, HOME=str(home), FAKE_EXIT="0"), timeout=60)
  assert out.returncode == 0, out.stderr
  assert (f"venv=1 cwd={home / 'radimagenet-jax'} local_device_ids= distributed=1 "
          f"tfds={home / 'tensorflow_datasets'}") in out.stdout
  assert _args(out.stdout) == _RUN_ARGS


def test_tpu_pod_reuses_a_ready_slice_and_can_skip_the_install(tmp_path):
  result = _tpu(tmp_path, "--skip-install", STUB_TPU_STATE="READY")
  assert result.returncode == 0, result.stderr
  assert [c[3] for c in _gcloud_calls(tmp_path)] == ["describe", "ssh"]
  assert "slice rij-test: READY" in result.stdout


def test_tpu_pod_replaces_a_preempted_slice(tmp_path):
  result = _tpu(tmp_path, "--skip-install", STUB_TPU_STATE="PREEMPTED")
  assert result.returncode == 0, result.stderr
  calls = _gcloud_calls(tmp_path)
  assert [c[3] for c in calls] == ["describe", "delete", "create", "ssh"]
  assert calls[1][4] == "rij-test" and "--quiet" in calls[1]


def test_tpu_pod_dry_run_prints_every_command_and_runs_none(tmp_path):
  result = _tpu(tmp_path, "--dry-run")
  assert result.returncode == 0, result.stderr
  assert not _calls(tmp_path)
  printed = [shlex.split(line[2:]) for line in result.stdout.splitlines()
             if line.startswith("+ ")]
  assert [p[0] if p[0] != "gcloud" else p[4] for p in printed] == [
      "describe", "create", "tar", "scp", "ssh", "ssh"]
  assert not os.path.exists(printed[2][2])  # tar was only printed
  assert printed[-1][-1].endswith("radimagenet-jax pretrain --config=configs/pretrain.py:tiny "
                                  "--workdir=/mnt/bucket/runs/a\\ b --config.learning_rate=3e-4")


def test_tpu_pod_without_a_zone_says_what_is_missing(tmp_path):
  env = _env(tmp_path)
  env.pop("ZONE", None)
  result = subprocess.run(["bash", TPU_POD, "--", *_RUN_ARGS], env=env, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2
  assert "ZONE is not set; expected the zone of the TPU slice" in result.stderr
  assert not _calls(tmp_path)


_FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in for python in local.sh: waits for SIGTERM, then exits like the training engine.
trap 'kill "$sleeper"; echo "process $JAX_PROCESS_ID stopped by SIGTERM"; exit 143' TERM
echo "process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES at $JAX_COORDINATOR_ADDRESS: $*"
sleep 60 & sleeper=$!
wait
"""


def test_local_sh_passes_sigterm_to_every_process_and_reports_each_exit(tmp_path):
  fake = _write(str(tmp_path / "python"), _FAKE_PYTHON)
  env = _env(tmp_path, PYTHON=fake, LOG_DIR=tmp_path / "logs", PORT=23456)
  proc = subprocess.Popen(["bash", LOCAL_SH, "3", "2", "--", "pretrain", "--workdir=w"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  try:
    logs = [tmp_path / "logs" / f"process_{i}.log" for i in range(3)]
    deadline = time.monotonic() + 30
    while not all(p.exists() and p.read_text() for p in logs):
      assert time.monotonic() < deadline, "the processes did not start"
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 143, out
  for i, path in enumerate(logs):
    text = path.read_text()
    assert f"process {i} of 3 at localhost:23456: -m radimagenet_jax.cli pretrain --workdir=w" \
        in text
    assert f"process {i} stopped by SIGTERM" in text
    assert f"process {i} exited with status 143" in out
    assert (tmp_path / "logs" / f"process_{i}.pid").read_text().strip().isdigit()


def _local_sh_stopped(tmp_path, fake, earlier=()):
  """local.sh 2 1 with the stand-in python, sent SIGTERM once both processes logged (their pid
  files not those of the `earlier` attempt, whose logs local.sh moves away first)."""
  env = _env(tmp_path, PYTHON=fake, LOG_DIR=tmp_path / "logs")
  proc = subprocess.Popen(["bash", LOCAL_SH, "2", "1", "--", "sweep", "--workdir=w"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  try:
    logs = [tmp_path / "logs" / f"process_{i}.log" for i in range(2)]
    read = lambda p: p.read_text() if p.exists() else ""
    pid_files = [tmp_path / "logs" / f"process_{i}.pid" for i in range(2)]
    deadline = time.monotonic() + 30
    while not (all(read(p) for p in logs) and all(read(p) and read(p) not in earlier
                                                  for p in pid_files)):
      assert time.monotonic() < deadline, "the processes did not start"
      time.sleep(0.05)
    pids = [read(p) for p in pid_files]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  return proc.returncode, err, pids


def test_local_sh_after_a_preemption_says_stopped_and_keeps_the_attempts_logs(tmp_path):
  fake = _write(str(tmp_path / "python"), _FAKE_PYTHON)
  status, err, first_pids = _local_sh_stopped(tmp_path, fake)
  assert status == 143
  assert err.strip().splitlines()[-1] == (
      f"stopped by SIGTERM (preempted or stopped, not failed: exit 143); re-run the same command "
      f"to resume from the last checkpoint (logs in {tmp_path / 'logs'})")
  assert "a process failed" not in err
  status, err, second_pids = _local_sh_stopped(tmp_path, fake, first_pids)   # the resumed one
  assert status == 143 and f"moved the previous attempt's logs to {tmp_path / 'logs'}/attempt_1" \
      in err
  kept = tmp_path / "logs" / "attempt_1"
  assert [(kept / f"process_{i}.pid").read_text() for i in range(2)] == first_pids != second_pids
  assert all("stopped by SIGTERM" in (kept / f"process_{i}.log").read_text() for i in range(2))
  _local_sh_stopped(tmp_path, fake, second_pids)
  assert sorted(os.listdir(tmp_path / "logs")) == [
      "attempt_1", "attempt_2", "process_0.log", "process_0.pid", "process_1.log", "process_1.pid"]


def test_local_sh_reports_a_real_failure_as_a_failure(tmp_path):
  fake = _write(str(tmp_path / "python"), "#!/usr/bin/env bash\nexit $((JAX_PROCESS_ID * 3))\n")
  result = subprocess.run(["bash", LOCAL_SH, "2", "1", "--", "sweep"], capture_output=True,
                          text=True, timeout=60,
                          env=_env(tmp_path, PYTHON=fake, LOG_DIR=tmp_path / "logs"))
  assert result.returncode == 3
  assert result.stderr.strip().splitlines()[-1] == (
      f"a process failed (exit 3); logs in {tmp_path / 'logs'}")


def test_local_sh_rejects_a_bad_process_count(tmp_path):
  result = subprocess.run(["bash", LOCAL_SH, "two", "2", "--", "pretrain"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=30)
  assert result.returncode == 2
  assert "NUM_PROCESSES=two and DEVICES_PER_PROCESS=2: expected positive integers" in result.stderr
