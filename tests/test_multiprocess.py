"""Several JAX processes on localhost (gloo): start-up on an empty data dir, equality with one
process, data sharding, failures, SIGTERM and kill -9 with exact resume, the compile cache; the
same for fine-tuning and sweeps.

Every pretraining run is `launch/local.sh 2 4 -- pretrain --config=tests/multiprocess_util.py ...`:
2 processes x 4 simulated CPU devices, `configs/pretrain.py:tiny` on the demo data with a one-conv
model (see tests/multiprocess_util.py), 16 steps with a checkpoint every 4 (every step in the
interrupted runs); fine-tuning and sweeps use `configs/finetune.py:tiny` with that model
(`--config=tests/multiprocess_util.py:finetune`). The runs share one compile cache
(RADIMAGENET_JAX_CACHE) and a 10 s heartbeat timeout.

Equality with one process needs the global batch of every step to hold the same examples in the
same order (a dropout mask belongs to a batch row): the test first compares the examples each run
read (rebuilt from the checkpointed input-pipeline states), then the parameters.
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from radimagenet_jax import checkpoints, distributed
from tests import multiprocess_util as mp

STEPS, CKPT_EVERY = 16, 4
OVERRIDES = (f"--config.num_train_steps={STEPS}", f"--config.checkpoint_every={CKPT_EVERY}",
             "--config.log_every=4")
# Hang guards only (never asserted as durations: timings belong in benchmarks/): a launch still
# running after this long fails the test with every log. The mechanisms are asserted instead.
HANG_GUARD_S = 600
# What a process prints when the coordination service ends it after another one died.
STOPPED_BY_SERVICE = "Terminating process because the JAX distributed service detected fatal errors"
# The interrupted runs checkpoint every step (an interval that may change on resume; parameters do
# not depend on it): the tiny model's steps take milliseconds, so with one checkpoint every 4 the
# signal could land so late that no checkpoint was left between the stop and the last step.
INTERRUPTED = tuple(o for o in OVERRIDES if "checkpoint_every" not in o) + (
    "--config.checkpoint_every=1",)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  """The 2-process run from an EMPTY data dir: (tmp dir, env, workdir, status, console, Launch)."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  data_dir = tmp / "tfds"
  data_dir.mkdir()
  env = mp.base_env(tmp, data_dir)
  workdir = tmp / "two_processes"
  status, out, launch = mp.run_local(2, 4, mp.pretrain_args(workdir, *OVERRIDES), env,
                                     tmp / "logs_two_processes")
  return {"tmp": tmp, "env": env, "data_dir": data_dir, "workdir": workdir, "status": status,
          "out": out, "launch": launch}


def _assert_same_params(a, b, rtol, atol):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def test_two_processes_on_an_empty_data_dir_build_it_once_then_train(job):
  launch = job["launch"]
  assert job["status"] == 0, job["out"] + launch.logs()
  log0, log1 = launch.log(0), launch.log(1)
  assert "process 0: building radimagenet_demo/pretrain" in log0
  assert "process 1: waiting for process 0 to build radimagenet_demo/pretrain" in log1
  assert "building" not in log1 and "Cannot rename" not in log0 + log1
  assert list((job["data_dir"] / "radimagenet_demo" / "pretrain").glob("*/dataset_info.json"))
  assert not (job["data_dir"] / ".radimagenet_jax_build").exists()  # markers cleaned up
  assert f"global batch 8 on 8 device(s) / 2 process(es), steps 0 -> {STEPS}" in log0
  assert checkpoints.latest_step(job["workdir"]) == STEPS


def test_each_process_reads_only_its_shard(job):
  # Observable: the input-pipeline state each process checkpoints (its sampler, its shard and the
  # last index it read), from which the record keys it read are rebuilt.
  assert job["status"] == 0
  read = [mp.records_read(job["workdir"], i, 2) for i in range(2)]
  assert [len(r) for r in read] == [4 * STEPS, 4 * STEPS]  # batch 8 over 2 processes
  assert len(set(read[0]) | set(read[1])) == 8 * STEPS  # disjoint, nothing read twice


def test_two_processes_end_with_the_parameters_of_one_process_with_8_devices(job):
  assert job["status"] == 0
  workdir = job["tmp"] / "one_process"
  result = mp.run_single(mp.pretrain_args(workdir, *OVERRIDES), job["env"], devices=8)
  assert result.returncode == 0, result.stdout + result.stderr
  one = mp.records_read(workdir, 0, 1)
  two = [mp.records_read(job["workdir"], i, 2) for i in range(2)]
  # The global batch of step k: process 0's 4 examples, then process 1's (the rows of the mesh).
  two_per_step = [two[0][4 * k:4 * k + 4] + two[1][4 * k:4 * k + 4] for k in range(STEPS)]
  one_per_step = [one[8 * k:8 * k + 8] for k in range(STEPS)]
  assert two_per_step == one_per_step, (
      "the 2-process run trained on other global batches than the 1-process run, so their "
      "parameters cannot agree (grain's ShardByJaxProcess gives each process a contiguous part of "
      "the records and shuffles within it). Step 1: 1 process read "
      f"{one_per_step[0]}, 2 processes {two_per_step[0]}.")
  # Only float rounding differs (sums over 4 + 4 rows instead of 8).
  _assert_same_params(mp.params(job["workdir"]), mp.params(workdir), rtol=1e-4, atol=1e-5)


def test_a_two_process_checkpoint_loads_in_one_process_with_load_variables(job):
  # What `rij.models.create(..., weights=workdir)` and fine-tuning do with a pod-trained run.
  assert job["status"] == 0
  loaded = checkpoints.load_variables(job["workdir"])
  from flax import traverse_util
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(loaded).items()}
  _assert_same_params(flat, mp.params(job["workdir"]), rtol=0, atol=0)


def _jsonl(path, split):
  rows = [json.loads(line) for line in open(path)]
  return [(r["step"], r["loss"]) for r in rows if r["split"] == split]


def test_two_process_fine_tuning_equals_one_process_with_8_devices(job):
  # Fine-tuning from the 2-process pretraining checkpoint (16 classes: its backbone, a fresh
  # 2-class head), the tiny config: 6 steps, validation every 2 on its first 2 batches (the
  # model selection), the lesion data built on first use by one of the two processes.
  assert job["status"] == 0
  args = ("--config.num_train_steps=6",)
  settings = f"init={job['workdir']},freeze=all"
  two, one = job["tmp"] / "finetune_two", job["tmp"] / "finetune_one"
  status, out, launch = mp.run_local(2, 4, mp.finetune_args(two, *args, settings=settings),
                                     job["env"], job["tmp"] / "logs_finetune")
  assert status == 0, out + launch.logs()
  assert "global batch 8 on 8 device(s) / 2 process(es)" in launch.log(0), launch.log(0)
  single = mp.run_single(mp.finetune_args(one, *args, settings=settings), job["env"])
  assert single.returncode == 0, single.stdout + single.stderr
  # Validation on the first batches measures the same examples on 1 and 2 processes, so the
  # losses, hence the selected `best` step, agree.
  val_two, val_one = _jsonl(two / "metrics.jsonl", "validation"), _jsonl(one / "metrics.jsonl",
                                                                           "validation")
  assert [s for s, _ in val_two] == [s for s, _ in val_one] == [2, 4, 6]
  np.testing.assert_allclose([v for _, v in val_two], [v for _, v in val_one], rtol=1e-5)
  run_two, run_one = (json.load(open(d / "run.json")) for d in (two, one))
  assert run_two["best_step"] == run_one["best_step"]
  _assert_same_params(mp.params(two), mp.params(one), rtol=1e-4, atol=1e-6)
  # The test predictions (gathered from both processes, written by process 0) and metrics.
  rows_two, rows_one = (list(csv.DictReader(open(d / "predictions.csv"))) for d in (two, one))
  assert [r["id"] for r in rows_two] == [r["id"] for r in rows_one] and len(rows_one) > 50
  np.testing.assert_allclose([float(r["score_1"]) for r in rows_two],
                             [float(r["score_1"]) for r in rows_one], atol=1e-5)
  m_two, m_one = (json.load(open(d / "metrics.json")) for d in (two, one))
  assert m_two["n"] == m_one["n"] and abs(m_two["auc"] - m_one["auc"]) < 1e-9


def test_a_failed_build_stops_every_process_with_the_builders_error(job):
  # radimagenet/default needs the manually downloaded release, which a training config cannot
  # name: the build fails on process 0 (before writing anything), the real failure a user meets.
  data_dir = job["tmp"] / "tfds_failing"
  env = dict(job["env"], TFDS_DATA_DIR=str(data_dir))
  status, out, launch = mp.run_local(
      2, 4, mp.pretrain_args(job["tmp"] / "failing", "--config.dataset=radimagenet/default"),
      env, job["tmp"] / "logs_failing", timeout=HANG_GUARD_S)
  log0, log1 = launch.log(0), launch.log(1)
  assert status == 1, out + launch.logs()
  assert "process 0 exited with status 1" in out and "process 1 exited with status 1" in out
  # (process 1 prints "waiting for process 0 to build ..." only when it gets there before process
  # 0's failure is published; under load either order happens)
  assert "radimagenet needs the manually downloaded release" in log0
  assert re.search(r"process 0 \(.*\) failed while preparing radimagenet/default: ValueError: "
                   r"radimagenet needs the manually downloaded release", log1), log1
  # No timeout was waited out: both processes met at the error barrier (a shared error), so
  # neither took the failed-alone exit, and no collective timed out.
  assert "DEADLINE_EXCEEDED" not in log0 + log1
  assert distributed.FAILED_ALONE not in log0 + log1, launch.logs()
  assert not data_dir.exists() or not os.listdir(data_dir)  # nothing left behind


def test_a_process_that_fails_alone_ends_the_job_without_waiting_out_the_shutdown_timeout(job):
  # Process 1 alone raises (tracing its model; tests/multiprocess_util.py) while process 0 waits
  # for it in a collective. Without exit_if_failed_alone, process 1 would wait at exit for the
  # others up to the shutdown timeout (set to its default, 300 s, here) before anything ends.
  env = dict(job["env"], **{mp.FAIL_ENV: "1", distributed.SHUTDOWN_TIMEOUT_ENV: "300"})
  status, out, launch = mp.run_local(2, 4, mp.pretrain_args(job["tmp"] / "failing_alone",
                                                            *OVERRIDES),
                                     env, job["tmp"] / "logs_failing_alone", timeout=HANG_GUARD_S)
  assert status != 0, out + launch.logs()
  assert "process 1 exited with status 1" in out, out + launch.logs()
  assert re.search(r"process 0 exited with status [1-9]\d*", out), out + launch.logs()
  assert "error: injected failure on process 1" in launch.log(1), launch.log(1)
  assert "injected failure" not in launch.log(0), launch.log(0)
  # The mechanism, not the duration: process 1 left through exit_if_failed_alone (its log line),
  # not through the normal exit that would wait out the 300 s shutdown timeout. (Process 0's
  # collective then fails for the closed connection, and it leaves the same way.)
  assert (f"{distributed.FAILED_ALONE} (process 1 of 2): exiting now" in launch.log(1)), \
      launch.log(1)


def _interrupt_after_checkpoint(job, workdir, logs, after_step, sig, process):
  """Starts the run, sends `sig` to `process` once a checkpoint later than `after_step` exists,
  waits for local.sh; returns (status, console, Launch)."""
  launch = mp.Launch(2, 4, mp.pretrain_args(workdir, *INTERRUPTED), job["env"], logs)
  try:
    def later_checkpoint():
      step = checkpoints.latest_step(workdir) if (workdir / "checkpoints").is_dir() else None
      return (step is not None and step > after_step) or launch.proc.poll() is not None
    mp.wait_for(later_checkpoint, 300, f"a checkpoint after step {after_step} in {workdir}")
    assert launch.proc.poll() is None, "the run ended before the signal:\n" + launch.logs()
    os.kill(launch.pid(process), sig)
    status, out = launch.wait(timeout=HANG_GUARD_S)
    return status, out, launch
  finally:
    launch.kill()


def test_sigterm_then_kill_9_then_rerun_ends_with_the_parameters_of_an_uninterrupted_run(job):
  assert job["status"] == 0
  workdir = job["tmp"] / "interrupted"

  # 1. SIGTERM to process 1 only (what SLURM/Kubernetes/TPU maintenance send). The engine's
  # contract: every process finishes the step, all save the checkpoint of the same step, print
  # "... stopped by SIGTERM at step N ... re-run the same command to resume" and exit with 143.
  status, out, launch = _interrupt_after_checkpoint(
      job, workdir, job["tmp"] / "logs_sigterm", 0, signal.SIGTERM, 1)
  assert status == 143, out + launch.logs()
  stopped = []
  for i in range(2):
    match = re.search(r"stopped by SIGTERM at step (\d+).*re-run the same command to resume",
                      launch.log(i))
    assert match, launch.log(i)
    stopped.append(int(match.group(1)))
  assert stopped[0] == stopped[1] and 0 < stopped[0] < STEPS, stopped
  assert checkpoints.latest_step(workdir) == stopped[0]

  # 2. The re-run resumes there; kill -9 of process 1 after its next checkpoint: process 0 must
  # exit with an error, ended by the distributed service's failure detection (the heartbeat
  # timeout is 10 s here), not hang in a collective.
  status, out, launch = _interrupt_after_checkpoint(
      job, workdir, job["tmp"] / "logs_killed", stopped[0], signal.SIGKILL, 1)
  assert f"steps {stopped[0]} -> {STEPS} (resumed)" in launch.log(0), launch.log(0)
  assert "process 1 exited with status 137" in out, out
  assert re.search(r"process 0 exited with status [1-9]\d*", out), out + launch.logs()
  assert STOPPED_BY_SERVICE in launch.log(0), launch.log(0)
  killed_at = checkpoints.latest_step(workdir)
  assert stopped[0] < killed_at < STEPS, killed_at

  # 3. Re-running the launcher resumes from the last checkpoint and ends exactly where the
  # uninterrupted run ended.
  status, out, launch = mp.run_local(2, 4, mp.pretrain_args(workdir, *OVERRIDES), job["env"],
                                     job["tmp"] / "logs_rerun")
  assert status == 0, out + launch.logs()
  assert f"steps {killed_at} -> {STEPS} (resumed)" in launch.log(0), launch.log(0)
  _assert_same_params(mp.params(job["workdir"]), mp.params(workdir), rtol=0, atol=0)


_CACHE_SCRIPT = """
import jax, jax.numpy as jnp
from radimagenet_jax import distributed
hits = []
def listen(event, **kwargs):
  if event == "/jax/compilation_cache/cache_hits":
    hits.append(event)
jax.monitoring.register_event_listener(listen)
print("dir", distributed.enable_compilation_cache())
print("value", float(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.float32(1.0))))
print("hits", len(hits))
"""


def test_a_second_process_loads_a_tiny_jitted_function_from_the_compile_cache(tmp_path):
  cache = tmp_path / "cache"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # JAX caches only programs that took >= 1 s to compile; this one takes milliseconds.
  env.update(RADIMAGENET_JAX_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PLATFORMS="cpu")
  runs = []
  for _ in range(2):
    result = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=120, cwd=mp.REPO)
    assert result.returncode == 0, result.stderr
    runs.append((result.stdout, sorted(p.name for p in cache.rglob("*") if p.is_file())))
  (first, files_first), (second, files_second) = runs
  assert f"dir {cache}" in first and "hits 0\n" in first
  assert files_first, "the first run wrote nothing into the cache"
  assert "hits 0\n" not in second and files_second == files_first


def test_compilation_cache_dir_resolves_argument_then_env_then_default(monkeypatch, tmp_path):
  monkeypatch.delenv(distributed.CACHE_ENV, raising=False)
  assert distributed.compilation_cache_dir() == os.path.expanduser(
      "~/.cache/radimagenet_jax/jax")
  monkeypatch.setenv(distributed.CACHE_ENV, str(tmp_path / "env"))
  assert distributed.compilation_cache_dir("") == str(tmp_path / "env")
  assert distributed.compilation_cache_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")
  assert distributed.compilation_cache_dir("none") is None
  monkeypatch.setenv(distributed.CACHE_ENV, "none")
  assert distributed.compilation_cache_dir() is None
  assert distributed.compilation_cache_dir("gs://bucket/cache") == "gs://bucket/cache"


def test_bad_timeout_in_the_environment_is_an_error_naming_it(monkeypatch):
  monkeypatch.setenv(distributed.HEARTBEAT_TIMEOUT_ENV, "soon")
  with pytest.raises(ValueError, match="RADIMAGENET_JAX_HEARTBEAT_TIMEOUT='soon': expected a "
                                       "positive whole number of seconds"):
    distributed.env_seconds(distributed.HEARTBEAT_TIMEOUT_ENV, 60)


SWEEP = ("--config.sweep_inits=random", "--config.sweep_folds=0,1")  # 2 runs: fold 0 and fold 1


def test_sigterm_stops_a_sweep_with_143_and_the_next_call_resumes_its_run(job):
  # SLURM requeues on 143 (launch/slurm.sbatch); the run that got the signal is not a failure and
  # the sweep does not start the next one (the grace period would end it mid-run).
  workdir = job["tmp"] / "sweep_sigterm"
  args = mp.finetune_args(workdir, *SWEEP, "--config.num_train_steps=40",
                          "--config.checkpoint_every=1", command="sweep", settings="sweep=tiny")
  env = dict(job["env"], XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.Popen([sys.executable, "-m", "radimagenet_jax.cli", *args], cwd=mp.REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step 4/40"):
      proc.send_signal(signal.SIGTERM)
  out = "".join(lines)
  assert proc.wait(timeout=300) == 143, out
  assert re.search(r"stopped by SIGTERM at step \d+; checkpoint saved", out), out
  assert "[2/2]" not in out and "FAILED" not in out, out
  first = workdir / "runs" / "mp_tiny_cnn-head-lr0.01-random-fold0"
  assert not (first / "failed.json").exists()
  stopped = checkpoints.latest_step(first)
  assert stopped is not None and stopped < 40
  again = mp.run_single(args, job["env"])
  assert again.returncode == 0, again.stdout + again.stderr
  assert f"steps {stopped} -> 40 (resumed)" in again.stdout, again.stdout
  rows = list(csv.DictReader(open(workdir / "results.csv")))
  assert [r["status"] for r in rows] == ["done", "done"], rows


def test_a_sweep_run_failing_on_one_process_is_recorded_with_its_cause_and_the_rerun_does_it(job):
  # Process 1 alone fails (tracing its model) in every run, while process 0 waits for it in a
  # collective until that gives up: both must record the same failure, with process 1's error as
  # the cause, and go on together; re-running without the failure retries the failed runs.
  workdir = job["tmp"] / "sweep_failing"
  # One run (fold 0): each failing run costs process 0's collective time-out (30 s).
  args = mp.finetune_args(workdir, "--config.sweep_inits=random", command="sweep",
                          settings="sweep=tiny")
  status, out, launch = mp.run_local(2, 4, args, dict(job["env"], **{mp.FAIL_ENV: "1"}),
                                     job["tmp"] / "logs_sweep_failing", timeout=400)
  assert status == 1, out + launch.logs()
  for name in ("mp_tiny_cnn-head-lr0.01-random-fold0",):
    failed = json.load(open(workdir / "runs" / name / "failed.json"))
    assert "process 1: ValueError: injected failure on process 1" in failed["error"], failed
    for i in range(2):
      assert re.search(rf"{name}: FAILED: .*process 1: ValueError: injected failure",
                       launch.log(i)), launch.log(i)
  status, out, launch = mp.run_local(2, 4, args, job["env"], job["tmp"] / "logs_sweep_rerun")
  assert status == 0, out + launch.logs()
  rows = list(csv.DictReader(open(workdir / "results.csv")))
  assert [r["status"] for r in rows] == ["done"], rows


def test_a_batched_sweep_on_two_processes_gives_the_results_of_one_process(job):
  # parallel_runs=2 (finetune.parallel: the runs' states vmapped in one step), its batch sharded
  # over the 2 x 4 devices; the two folds' runs go to two chunks (one data split per chunk). An
  # empty data dir: process 0 builds the lesion set while process 1 waits, so process 0 creates
  # the first run's checkpoint folder before process 1 looks for it (`checkpoints.latest_step`),
  # which must not put an unmatched Orbax sync on process 1.
  args = (*SWEEP, "--config.parallel_runs=2")
  env = dict(job["env"], TFDS_DATA_DIR=str(job["tmp"] / "tfds_batched"))
  two, one = job["tmp"] / "batched_two", job["tmp"] / "batched_one"
  status, out, launch = mp.run_local(2, 4, mp.finetune_args(two, *args, command="sweep",
                                                            settings="sweep=tiny"),
                                     env, job["tmp"] / "logs_batched")
  assert status == 0, out + launch.logs()
  assert "runs in one step" in launch.log(0), launch.log(0)
  single = mp.run_single(mp.finetune_args(one, *args, command="sweep", settings="sweep=tiny"), env)
  assert single.returncode == 0, single.stdout + single.stderr
  rows_two, rows_one = (list(csv.DictReader(open(d / "results.csv"))) for d in (two, one))
  assert [r["status"] for r in rows_two] == ["done", "done"], rows_two
  assert [r["run"] for r in rows_two] == [r["run"] for r in rows_one]
  np.testing.assert_allclose([float(r["auc"]) for r in rows_two],
                             [float(r["auc"]) for r in rows_one], rtol=1e-6)
  assert [r["best_epoch"] for r in rows_two] == [r["best_epoch"] for r in rows_one]
