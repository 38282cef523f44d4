"""Helpers for the multi-process tests, and the config file their runs use.

As a config file, `--config=tests/multiprocess_util.py` gives `configs/pretrain.py:tiny` (the
demo dataset at 32x32, global batch 8, built on first use) with a one-conv model `mp_tiny_cnn`
(conv -> BatchNorm -> ReLU -> the paper's GAP/Dropout/Dense head), registered when the config is
loaded. ResNet50 would spend minutes of the tests' budget compiling in every process; the
multi-process behaviour under test (start-up, data sharding, sync BatchNorm, checkpoints, resume,
failures) does not depend on the architecture. `--config.KEY=VALUE` overrides work as usual.

Launch helpers run `launch/local.sh` (or the CLI as one process) in a fresh environment and
return the exit status and logs; `params` reads a workdir's final variables.
"""
import importlib.util
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.abspath(__file__)
LOCAL_SH = os.path.join(REPO, "launch", "local.sh")
# Environment variables of the pytest process that must not leak into the launched processes.
_DROP_ENV = ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
             "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE")


FAIL_ENV = "RIJ_TEST_FAIL_ON_PROCESS"  # a process index: that process alone fails tracing its model


def _fail_here_if_asked():
  """A failure on one process only (a bad file or an out-of-memory there, say): ValueError while
  the process whose index is $RIJ_TEST_FAIL_ON_PROCESS traces the model."""
  import jax
  if os.environ.get(FAIL_ENV) == str(jax.process_index()):
    raise ValueError(f"injected failure on process {jax.process_index()} (${FAIL_ENV})")


def _tiny_cnn_class():
  from radimagenet_jax.models import base

  class MpTinyCNN(base.KerasApplication):
    """conv 3x3/2 (8 filters, no bias) -> BatchNorm -> ReLU, then the paper's head."""
    spec_name = "mp_tiny_cnn"
    min_size = 8
    default_size = 32
    feature_layer = "conv1_relu"
    keras_application = ""

    @staticmethod
    def backbone(L, x):
      _fail_here_if_asked()
      # No conv bias: in front of BatchNorm its gradient is exactly zero, and Adam would turn the
      # rounding noise of that zero into full-size steps that differ with the summation order.
      x = L.conv(x, 8, 3, strides=2, use_bias=False, name="conv1_conv")
      x = L.bn(x, name="conv1_bn")
      return L.act(x, "relu", name="conv1_relu")

  return MpTinyCNN


def get_config(arg=None):
  """configs/pretrain.py:tiny (ARG: more variants) with the model mp_tiny_cnn, registered here;
  ARG `finetune[,SETTINGS]`: configs/finetune.py:tiny[,SETTINGS] with that model instead."""
  from radimagenet_jax.models import registry
  registry.register(_tiny_cnn_class())
  parts = [p for p in (arg or "").split(",") if p]
  kind = "finetune" if parts[:1] == ["finetune"] else "pretrain"
  spec = importlib.util.spec_from_file_location(f"_rij_configs_{kind}",
                                                os.path.join(REPO, "configs", f"{kind}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(",".join(["tiny"] + parts[1 if kind == "finetune" else 0:]))
  c.model = "mp_tiny_cnn"
  if kind == "finetune":
    c.sweep_models = "mp_tiny_cnn"
  return c


def finetune_args(workdir, *overrides, command="finetune", settings="") -> list:
  arg = "finetune" + (f",{settings}" if settings else "")
  return [command, f"--config={CONFIG}:{arg}", f"--workdir={workdir}", *overrides]


def base_env(tmp_dir, data_dir, **extra) -> dict:
  """Environment for launched processes: own TFDS data dir, compile cache and short heartbeat."""
  env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
  env.update(TFDS_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu",
             RADIMAGENET_JAX_CACHE=os.path.join(str(tmp_dir), "jax_cache"),
             RADIMAGENET_JAX_HEARTBEAT_TIMEOUT="10", RADIMAGENET_JAX_SHUTDOWN_TIMEOUT="60",
             PYTHONUNBUFFERED="1", PYTHON=env.get("PYTHON", sys.executable),  # venv active or not
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  env.update({k: str(v) for k, v in extra.items()})
  return env


def pretrain_args(workdir, *overrides) -> list:
  return ["pretrain", f"--config={CONFIG}", f"--workdir={workdir}", *overrides]


class Launch:
  """`launch/local.sh N D -- ARGS` started in the background (its own process group); its console
  output goes to LOG_DIR/console.log."""

  def __init__(self, num_processes, devices, args, env, log_dir):
    self.log_dir = str(log_dir)
    self.num_processes = num_processes
    os.makedirs(self.log_dir, exist_ok=True)
    self.console = os.path.join(self.log_dir, "console.log")
    env = dict(env, LOG_DIR=self.log_dir)
    with open(self.console, "w") as out:
      self.proc = subprocess.Popen(["bash", LOCAL_SH, str(num_processes), str(devices), "--",
                                    *args], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)

  def pid(self, i: int) -> int:
    path = os.path.join(self.log_dir, f"process_{i}.pid")
    deadline = time.monotonic() + 30
    while not os.path.exists(path) or not open(path).read().strip():
      if time.monotonic() > deadline:
        raise TimeoutError(f"{path} never appeared")
      time.sleep(0.05)
    return int(open(path).read())

  def wait(self, timeout: float) -> tuple[int, str]:
    """(exit status of local.sh, its console output); kills everything after `timeout` s."""
    try:
      self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      self.proc.wait()
      raise AssertionError(f"launch did not finish within {timeout} s:\n{self.output()}\n"
                           f"{self.logs()}")
    return self.proc.returncode, self.output()

  def output(self) -> str:
    return open(self.console, errors="replace").read()

  def kill(self):
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    for i in range(self.num_processes):
      try:
        os.kill(self.pid(i), signal.SIGKILL)
      except (ProcessLookupError, TimeoutError, ValueError):
        pass

  def log(self, i: int) -> str:
    path = os.path.join(self.log_dir, f"process_{i}.log")
    return open(path, errors="replace").read() if os.path.exists(path) else ""

  def logs(self) -> str:
    return "\n".join(f"----- process {i} -----\n{self.log(i)}" for i in range(self.num_processes))


def run_local(num_processes, devices, args, env, log_dir, timeout=600):
  """Runs local.sh to the end: (status, console output, Launch)."""
  launch = Launch(num_processes, devices, args, env, log_dir)
  status, out = launch.wait(timeout)
  return status, out, launch


def run_single(args, env, devices=8, timeout=600) -> subprocess.CompletedProcess:
  """The CLI as ONE process with `devices` CPU devices (no jax.distributed)."""
  env = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "-m", "radimagenet_jax.cli", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def params(workdir) -> dict:
  """{'params/conv1_conv/kernel': array, ...}: the latest checkpoint's variables, flattened.

  Restored into numpy arrays shaped from the checkpoint's own metadata, so a checkpoint written by
  2 processes x 4 devices reads in this 1-process test the same way as one written by 1 process
  (`checkpoints.load_variables` is checked separately against this).
  """
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from flax import traverse_util
  from radimagenet_jax import checkpoints
  directory = os.path.join(str(workdir), checkpoints.CHECKPOINT_SUBDIR)
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                             item_handlers={checkpoints.VARIABLES:
                                            ocp.StandardCheckpointHandler()}) as mngr:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint")
    tree = mngr.item_metadata(step)[checkpoints.VARIABLES]
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    variables = mngr.restore(step, args=ocp.args.Composite(
        **{checkpoints.VARIABLES: ocp.args.StandardRestore(target)}))[checkpoints.VARIABLES]
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


def records_read(workdir, process: int, num_processes: int) -> list[int]:
  """The record keys process `process` read in training up to the latest checkpoint, in order.

  Rebuilt from the grain iterator state the process checkpointed
  (`data_iter/process_<i>-of-<n>.json`: the sampler's settings and the last index it yielded; a
  process yields the sampler indices i, i+n, i+2n, ...). Understands grain's IndexSampler and the
  `GlobalBatchSampler(IndexSampler(...), process i of n, block L)` proposed for the pipeline
  (process i reads rows [i*L, (i+1)*L) of every global batch of one global order).
  """
  import json
  import re
  import grain
  from radimagenet_jax import checkpoints
  step = checkpoints.latest_step(workdir)
  path = os.path.join(str(workdir), checkpoints.CHECKPOINT_SUBDIR, str(step),
                      checkpoints.DATA_ITER, f"process_{process}-of-{num_processes}.json")
  with open(path) as f:
    state = json.load(f)
  match = re.search(
      r"IndexSampler\(num_records=(\d+), shard_options=\w+\(shard_index=(\d+), "
      r"shard_count=(\d+), drop_remainder=(\w+)\), shuffle=(\w+), num_epochs=None, "
      r"seed=(\d+)\)", state["sampler"])
  assert match, f"unexpected sampler in {path}: {state['sampler']}"
  num_records, index, count, drop, shuffle, seed = match.groups()
  base = grain.samplers.IndexSampler(
      num_records=int(num_records), shuffle=shuffle == "True", num_epochs=None, seed=int(seed),
      shard_options=grain.sharding.ShardOptions(int(index), int(count), drop == "True"))
  block = re.fullmatch(r"GlobalBatchSampler\(.*, process (\d+) of (\d+), block (\d+)\)",
                       state["sampler"])
  last = int(state["last_seen_indices"]["0"])
  keys = []
  for k in range(process, last + 1, num_processes):
    if block:
      i, n, size = map(int, block.groups())
      m = k // n
      k = (m // size) * size * n + i * size + m % size
    else:
      assert (int(index), int(count)) == (process, num_processes), state["sampler"]
    keys.append(base[k].record_key)
  return keys


def wait_for(predicate, timeout: float, what: str, poll: float = 0.02):
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    time.sleep(poll)
