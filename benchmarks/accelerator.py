r"""The accelerator figures of docs/performance.md in one call: for each model, our bf16 train step (state
init and compile times, images/s) next to PyTorch's (torchvision / timm, channels_last, bf16
autocast; eager and torch.compile) on the same device, one framework at a time.

    python benchmarks/accelerator.py                         # 4 models, batch 256, 20 steps
    python benchmarks/accelerator.py --models resnet50 --torch eager --steps 5
    python benchmarks/accelerator.py --cache_check --float32 # + cached re-compile, fp32 ResNet50

Each measurement is a subprocess (benchmarks/train_throughput.py, benchmarks/peers.py --standalone)
with its own time limit, so one slow compile cannot eat the others' time; every line is printed as
soon as it is measured, and a markdown table at the end. Image size: 224 (299 for the Inception
pair). PyTorch is never a dependency: its columns are skipped when torch is not importable.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("resnet50", "inception_v3", "densenet121", "inception_resnet_v2")
SIZES = {"inception_v3": 299, "inception_resnet_v2": 299}


def _run(cmd, timeout, env=None, log=None):
  """(RESULT fields or None, the reason when None); the result lines are printed when it ends,
  the whole output goes to ``log`` when given."""
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    out = proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    proc, out = None, ""
    for part in (e.stdout, e.stderr):
      out += part.decode(errors="replace") if isinstance(part, bytes) else (part or "")
  if log:
    with open(log, "w") as f:
      f.write(_slow_phases(out))
  if proc is None:
    return None, f"not done in {timeout} s"
  lines = out.splitlines()
  for line in lines:
    if line.startswith(("RESULT", "ours", "peer", "arithmetic")):
      print("   ", line, flush=True)
  result = [l.split()[1:] for l in lines if l.startswith("RESULT")]
  if proc.returncode or not result:
    tail = " | ".join(lines[-3:])
    return None, f"exit {proc.returncode} after {time.perf_counter() - t0:.0f} s: {tail[-300:]}"
  return result[-1], ""


def _slow_phases(out: str, min_us: int = 100_000) -> str:
  """XLA's verbose log cut to what matters: timed phases of at least ``min_us`` and every line
  that is not an XLA info line (results, warnings, errors)."""
  keep = []
  for line in out.splitlines():
    m = re.search(r"\((\d+) us\)", line)
    if (m and int(m.group(1)) >= min_us) or not re.match(r"[IW]\d{4} ", line):
      keep.append(line)
  return "\n".join(keep) + "\n"


def ours(model, args, dtype="bfloat16", env=None, cache=""):
  cmd = [sys.executable, os.path.join(HERE, "train_throughput.py"), "--model", model,
         "--batch", str(args.batch), "--image_size", str(SIZES.get(model, 224)),
         "--steps", str(args.steps), "--dtype", dtype] + (["--cache", cache] if cache else [])
  log = None
  if args.xla_log_dir and model in args.xla_log_models.split(",") and not cache:
    # XLA's per-pass compile times (autotuning, fusion, LLVM / ptxas) for the slow compiles.
    env = {**(env or {}), "TF_CPP_MIN_LOG_LEVEL": "0",
           "TF_CPP_VMODULE": "hlo_pass_pipeline=1,gpu_compiler=1,nvptx_compiler=1"}
    os.makedirs(args.xla_log_dir, exist_ok=True)
    log = os.path.join(args.xla_log_dir, f"{model}_{dtype}.log")
  r, why = _run(cmd, args.timeout, env, log)
  return ({"init_s": float(r[0]), "compile_s": float(r[1]), "img_s": float(r[3])} if r
          else {"error": why})


def torch_peer(model, args, compiled, dtype="bfloat16"):
  cmd = [args.torch_python, os.path.join(HERE, "peers.py"), "torch", "--device", "cuda",
         "--model", model, "--batch", str(args.batch), "--image_size", str(SIZES.get(model, 224)),
         "--num_classes", "165", "--optimizer", "sgd", "--dtype", dtype, "--standalone",
         "--steps", str(args.steps)] + (["--compile"] if compiled else [])
  r, why = _run(cmd, args.timeout)
  return {"setup_s": float(r[0]), "img_s": float(r[2])} if r else {"error": why}


def _cell(r, key="img_s"):
  return r.get("error", "-")[:40] if key not in r else f"{r[key]:,.0f}"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--timeout", type=int, default=150, help="seconds per measurement")
  p.add_argument("--torch", default="eager,compile", help="'', eager, compile or both")
  p.add_argument("--compile_models", default="", help="torch.compile only these (default all)")
  p.add_argument("--torch_python", default=sys.executable)
  p.add_argument("--no_ours", dest="ours", action="store_false", help="PyTorch columns only")
  p.add_argument("--float32", action="store_true", help="also ResNet50 in float32 (both)")
  p.add_argument("--cache_check", action="store_true",
                 help="ResNet50 again with a warm persistent compilation cache")
  p.add_argument("--xla_log_dir", default="", help="save XLA's compile-pass log of ours here")
  p.add_argument("--xla_log_models", default="densenet121,inception_resnet_v2")
  args = p.parse_args(argv)
  try:
    subprocess.run([args.torch_python, "-c", "import torch; assert torch.cuda.is_available()"],
                   check=True, capture_output=True)
    modes = [m for m in args.torch.split(",") if m]
  except (subprocess.CalledProcessError, FileNotFoundError):
    print("torch with CUDA is not importable: PyTorch columns skipped")
    modes = []
  only_compile = [m for m in args.compile_models.split(",") if m]
  import jax  # noqa: E402  (after the torch probe: no device memory held meanwhile)
  dev = jax.devices()[0]
  print(f"{datetime.date.today()}, {jax.device_count()} x {getattr(dev, 'device_kind', dev.platform)}, "
        f"jax {jax.__version__}, batch {args.batch}, {args.steps} timed steps", flush=True)
  del jax
  rows = []
  for model in args.models.split(","):
    row = {"model": model}
    if args.ours:
      print(f"== {model} (ours, bf16)", flush=True)
    row["ours"] = ours(model, args) if args.ours else {"error": "not run"}
    if "eager" in modes:
      print(f"== {model} (torch eager)", flush=True)
      row["eager"] = torch_peer(model, args, compiled=False)
    if "compile" in modes and (not only_compile or model in only_compile):
      print(f"== {model} (torch.compile)", flush=True)
      row["compile"] = torch_peer(model, args, compiled=True)
    rows.append(row)
  if args.float32:
    print("== resnet50 float32 (ours, torch eager)", flush=True)
    rows.append({"model": "resnet50 float32", "ours": ours("resnet50", args, "float32"),
                 **({"eager": torch_peer("resnet50", args, False, "float32")} if modes else {})})
  if args.cache_check:
    with tempfile.TemporaryDirectory() as cache:
      print("== resnet50 cold compile, then again from the persistent cache", flush=True)
      cold = ours("resnet50", args, cache=cache)
      warm = ours("resnet50", args, cache=cache)
      print(f"compile + first step: cold {_cell(cold, 'compile_s')} s, from the cache "
            f"{_cell(warm, 'compile_s')} s; state init: cold {_cell(cold, 'init_s')} s, "
            f"cached {_cell(warm, 'init_s')} s", flush=True)
  print("\n| model | ours img/s | ours compile + 1st step (s) | state init (s) | torch eager | "
        "torch.compile | ours / eager | ours / compile |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    o, e, c = r["ours"], r.get("eager", {}), r.get("compile", {})
    ratio = lambda peer: (f"{o['img_s'] / peer['img_s']:.2f}x"
                          if "img_s" in o and "img_s" in peer else "-")
    print(f"| {r['model']} | {_cell(o)} | {o.get('compile_s', '-')} | {o.get('init_s', '-')} | "
          f"{_cell(e)} | {_cell(c)} | {ratio(e)} | {ratio(c)} |", flush=True)


if __name__ == "__main__":
  main()
