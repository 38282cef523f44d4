"""`radimagenet-jax <command> ...`: argument parsing only; the work happens in the library.

Config-driven commands (pretrain, evaluate, gradcam) take
    --config=configs/<file>.py[:arg] --workdir=DIR [--config.key=value ...]
in the ml_collections / big_vision style.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from radimagenet_jax import _cpu_tuning


def _config_command(argv, command, *, config_required=True, extra_flags=()):
  """Parses --config/--workdir/--config.key=value with ml_collections' absl flags.

  ``extra_flags``: (name, default, help) string flags of the command, returned as a dict."""
  from absl import flags
  from ml_collections import config_flags
  from radimagenet_jax import config_files
  argv = list(argv)
  for i, a in enumerate(argv):  # --config resolves from the installed package when not found here
    if a.startswith("--config=") and not any(h in argv for h in ("-h", "--help", "--helpfull")):
      try:
        argv[i] = "--config=" + config_files.resolve(a[len("--config="):])
      except FileNotFoundError as e:
        raise SystemExit(f"radimagenet-jax {command}: error: {e}")
  fv = flags.FlagValues()
  # sys_argv: ml_collections finds the --config.KEY=VALUE overrides there (default: sys.argv).
  config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:arg]).",
                                  flag_values=fv, lock_config=True,
                                  sys_argv=[f"radimagenet-jax {command}"] + list(argv))
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config used.",
                      flag_values=fv)
  for name, default, help_text in extra_flags:
    flags.DEFINE_string(name, default, help_text, flag_values=fv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    given = next((a[len("--config="):] for a in argv if a.startswith("--config=")), None)
    extra = "".join(f"\n  --{name:<8} {help_text}" for name, _, help_text in extra_flags)
    print(f"usage: radimagenet-jax {command} --config=configs/FILE.py[:ARG] --workdir=DIR "
          f"[--config.KEY=VALUE ...]\n\n{_COMMANDS[command][1]}\n\n"
          "  --config   config file, with an optional ':arg' variant (e.g. "
          f"{_DEFAULT_CONFIG.get(command, 'configs/pretrain.py:demo')})\n"
          "  --workdir  run directory (checkpoints, metrics, config.json)\n"
          f"  --config.KEY=VALUE  override any config field{extra}\n")
    try:
      print(config_files.describe(given or _DEFAULT_CONFIG.get(command, "configs/pretrain.py")))
    except (FileNotFoundError, ValueError) as e:
      print(f"(cannot describe the config: {e})")
    raise SystemExit(0)
  try:
    fv([f"radimagenet-jax {command}"] + list(argv))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    # AttributeError/KeyError: an unknown --config.KEY override (the config is locked).
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    if "Error whilst parsing config file" in message:
      # ml_collections embeds the config file's traceback: its last line is the error itself.
      message = [l for l in message.strip().splitlines() if l.strip()][-1]
    if isinstance(e, (AttributeError, KeyError)):
      # ml_collections nests a KeyError repr in the message: unescape it for the console.
      message = message.replace("\\n", ". ").replace("\\'", "").strip("'")
      message = f"unknown config key {' '.join(message.split())}"
    raise SystemExit(f"radimagenet-jax {command}: {message}{_valid_config_keys(e, argv)}")
  if (config_required and fv.config is None) or fv.workdir is None:
    raise SystemExit(f"radimagenet-jax {command}: --config and --workdir are required "
                     f"(see radimagenet-jax {command} --help).")
  workdir = os.path.expanduser(fv.workdir)   # `--workdir=~/runs/x`: the shell leaves `~` after `=`
  if extra_flags:
    return fv.config, workdir, {name: fv[name].value for name, _, _ in extra_flags}
  return fv.config, workdir


def _valid_config_keys(error, argv):
  """For an unknown --config.KEY override: '; valid config keys: ...' (else '')."""
  if not (isinstance(error, (AttributeError, KeyError))
          or "Unknown command line flag 'config." in str(error)):
    return ""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=["x"])
  try:
    fv(["radimagenet-jax"] + [a for a in argv if a.startswith("--config=")])
    return f"; valid config keys: {', '.join(sorted(fv.config.keys()))}"
  except Exception:  # the config file itself is broken: the original error is the useful one
    return ""


def _pretrain(argv):
  config, workdir = _config_command(argv, "pretrain")
  from radimagenet_jax import pretrain
  pretrain.train_and_evaluate(config, workdir)


def _evaluate(argv):
  config, workdir, extra = _config_command(
      argv, "evaluate", config_required=False,
      extra_flags=(("step", None, "checkpoint step (default: the latest)"),
                   ("split", None, "split to evaluate (default: the config's eval_split; for a "
                    "fine-tuning run, its own validation set: train / validation / test are the "
                    "run's sets)")))
  step = extra["step"]
  if step is not None and not step.strip().isdigit():
    raise ValueError(f"--step={step!r}: expected a checkpoint step, a whole number (the step "
                     f"folders under {os.path.join(workdir, 'checkpoints')}); omit it for the "
                     f"latest.")
  extra["step"] = None if step is None else int(step)
  if os.path.isfile(os.path.join(os.path.expanduser(workdir), "run.json")):  # a fine-tuning run
    from radimagenet_jax.finetune import run as run_lib
    run_lib.evaluate_run(workdir, step=extra["step"], split=extra["split"], config=config)
    return
  from radimagenet_jax.evaluate import command as evaluate_command
  evaluate_command.evaluate_workdir(workdir, step=extra["step"], split=extra["split"], config=config)


def _finetune(argv):
  config, workdir = _config_command(argv, "finetune")
  from radimagenet_jax.finetune import run
  run.finetune(config, workdir)


def _sweep(argv):
  config, workdir = _config_command(argv, "sweep")
  from radimagenet_jax.finetune import sweep_command
  failed = sweep_command.run(config, workdir)
  if failed:
    raise RuntimeError(f"{failed} run(s) of the sweep failed; see {workdir}/results.csv "
                       f"(re-running the command retries them).")


def _report(argv):
  p = argparse.ArgumentParser(prog="radimagenet-jax report", description=_COMMANDS["report"][1])
  p.add_argument("dirs", nargs="+", help="a sweep directory, or two or more run directories")
  p.add_argument("--out", default=None, help="output directory (default: the sweep directory, or "
                 "the first run directory's parent)")
  p.add_argument("--baseline", default=None, help="the init every other init is compared with "
                 "(default: the second in sweep.json, e.g. imagenet)")
  p.add_argument("--resamples", type=int, default=2000, help="patient-level bootstrap resamples "
                 "of the per-application gain (default 2000)")
  p.add_argument("--seed", type=int, default=0, help="seed of that bootstrap (default 0)")
  args = p.parse_args(argv)
  from radimagenet_jax import evaluate
  if args.out is not None:   # never the filesystem root or the home directory itself
    from radimagenet_jax.train import config as config_lib
    args.out = os.path.expanduser(args.out)
    config_lib.refuse_shared_folder(os.path.abspath(args.out), flag="--out")
  rep = evaluate.write_report(args.dirs, out_dir=args.out, baseline=args.baseline,
                              resamples=args.resamples, seed=args.seed)
  for summary_line in _report_lines(rep):
    print(summary_line)
  for f in rep["files"]:
    print(f"wrote {f}")


def _audit(argv):
  p = argparse.ArgumentParser(prog="radimagenet-jax audit", description=_COMMANDS["audit"][1])
  p.add_argument("sweeps", nargs="+", help="two or more sweep directories of one application, "
                 "the reference (e.g. sweep=paper) first")
  p.add_argument("--out", default=None, help="output directory (default: <first sweep>_audit)")
  p.add_argument("--candidate", default=None, help="default: the first init of each sweep")
  p.add_argument("--baseline", default=None, help="default: the second init (e.g. imagenet)")
  args = p.parse_args(argv)
  from radimagenet_jax.evaluate import audit
  rep = audit.audit(args.sweeps, args.out, args.candidate, args.baseline)
  print("\n".join(audit.lines(rep) + [f"wrote {f}" for f in rep["files"]]))


def _report_lines(rep) -> list[str]:
  lines = [n for n in rep.get("notes") or [] if n.startswith("Protocol")]
  lines += [f"WARNING: {w}" for w in rep.get("warnings") or []]
  for app in rep.get("applications") or []:
    for c in app["comparisons"]:
      if c.get("gain") is not None:
        lines.append(f"{app['dataset']}: {c['a']} vs {c['b']}: mean AUC {c['mean_auc_a']:.3f} vs "
                     f"{c['mean_auc_b']:.3f}, gain {100 * c['gain']:+.1f}% [95% CI "
                     f"{100 * c['gain_ci_low']:+.1f}%, {100 * c['gain_ci_high']:+.1f}%], p = "
                     f"{c['p_value']:.2g} (patient bootstrap, {app['n_patients']} patients)"
                     + ("" if c["p_value"] < 0.05 else ": NOT significant"))
  for init, s in (rep.get("summary") or {}).items():
    if s.get("mean") is not None:
      sd = "" if s.get("sd") is None else f" +- {s['sd']:.3f}"
      lines.append(f"{init}: AUC {s['mean']:.3f}{sd} over {s['n']} scenario(s)")
  for c in rep.get("comparison_summary") or []:
    gain = (c.get("gain") or {}).get("mean")
    if gain is not None:
      lines.append(f"{c['a']} vs {c['b']}: mean gain {100 * gain:+.1f}%, "
                   f"{c.get('a_better_p05', 0)} scenario(s) significantly better, "
                   f"{c.get('b_better_p05', 0)} worse (paired test, p < 0.05; after Holm "
                   f"{c.get('a_better_holm', 0)} better, {c.get('b_better_holm', 0)} worse)")
  return lines


def _gradcam(argv):
  config, workdir = _config_command(argv, "gradcam")
  from radimagenet_jax.explain import study, sweep_cam
  (sweep_cam.run if config.get("sweep") else study.run)(config, workdir, verbose=True)


def _convert(argv):
  from radimagenet_jax.data.preprocess import MODES
  p = argparse.ArgumentParser(prog="radimagenet-jax convert",
                              description=_COMMANDS["convert"][1])
  p.add_argument("--model", default=None, help="resnet50 | densenet121 | inception_v3 | "
                 "inception_resnet_v2 (default: the model the file matches)")
  p.add_argument("--h5", required=True, help="Keras .h5 / .weights.h5 file")
  p.add_argument("--workdir", required=True, help="output Orbax checkpoint directory")
  p.add_argument("--preprocess", default=None, choices=MODES, help="preprocessing the weights "
                 "were trained with (default: from the file name: radimagenet for RadImageNet "
                 "files, the keras.applications mode for Keras ImageNet files)")
  p.add_argument("--image_size", type=int, default=None, help="input size recorded (default: "
                 "the model's)")
  p.add_argument("--class_names", default=None, help="comma-separated names of the classes of "
                 "the file's classifier")
  p.add_argument("--drop_head", action="store_true", help="convert the backbone only, without "
                 "the file's classifier")
  args = p.parse_args(argv)
  from radimagenet_jax import keras_io
  model = args.model
  if model is None:
    model = keras_io.weights_info(args.h5)["model_name"]
    if model is None:
      raise ValueError(f"{args.h5}: matches none of the four models; pass --model "
                       f"(`radimagenet-jax inspect {args.h5}` tells what the file holds).")
  names = None if args.class_names is None else [c.strip() for c in args.class_names.split(",")]
  out = keras_io.convert(args.h5, model, args.workdir, preprocess=args.preprocess,
                         image_size=args.image_size, class_names=names,
                         keep_head=not args.drop_head)
  info = keras_io.weights_info(out)
  head = f", {info['num_classes']}-class head" if info["num_classes"] else ""
  print(f"wrote {out} ({info['model_name']}{head}, preprocess {info['preprocess']}, "
        f"{info['num_parameters']:,} parameters)")


def _inspect(argv):
  p = argparse.ArgumentParser(prog="radimagenet-jax inspect", description=_COMMANDS["inspect"][1])
  p.add_argument("file", help="Keras .h5 / .weights.h5 / .keras file")
  p.add_argument("--all_layers", action="store_true",
                 help="list every BatchNorm layer's statistics, not only the flagged ones")
  args = p.parse_args(argv)
  from radimagenet_jax import keras_io
  from radimagenet_jax.models import bn_stats
  print(keras_io.describe(args.file))
  for name in keras_io.matching_models(args.file)[:1]:
    rows = bn_stats.batchnorm_report(keras_io.load_h5(args.file, name), name)
    print(f"\nBatchNorm statistics ({name}):")
    print(bn_stats.format_batchnorm_report(rows, only_flagged=not args.all_layers))


def _export(argv):
  p = argparse.ArgumentParser(prog="radimagenet-jax export", description=_COMMANDS["export"][1])
  from radimagenet_jax.export import command
  command.add_arguments(p)
  command.run(p.parse_args(argv))


def _build(argv):
  p = argparse.ArgumentParser(prog="radimagenet-jax build", description=_COMMANDS["build"][1])
  p.add_argument("dataset", help="DATASET or DATASET/CONFIG, e.g. radimagenet_demo/pretrain")
  p.add_argument("--data_dir", default=None, help="TFDS data dir (default: ~/tensorflow_datasets)")
  p.add_argument("--manual_dir", default=None, help="folder holding the manually downloaded release")
  p.add_argument("--on_error", choices=("fail", "skip"), default="fail",
                 help="bad source files: stop (default) or skip and list them in a side file")
  p.add_argument("--overwrite", action="store_true", help="rebuild even if already built")
  args = p.parse_args(argv)
  from radimagenet_jax.data import build
  build.build(args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
              on_error=args.on_error, overwrite=args.overwrite)


_DEFAULT_CONFIG = {"pretrain": "configs/pretrain.py:demo", "finetune": "configs/finetune.py:demo",
                   "sweep": "configs/finetune.py:demo", "gradcam": "configs/gradcam.py:demo",
                   "evaluate": "configs/pretrain.py:demo"}

_COMMANDS = {
    "pretrain": (_pretrain, "Train a CNN from a config (demo or RadImageNet pretraining); "
                 "resumes from the latest checkpoint in --workdir."),
    "finetune": (_finetune, "Fine-tune one model on a downstream data set (init weights, freeze "
                 "mode, learning rate, fold); test metrics with the best validation epoch."),
    "sweep": (_sweep, "Run the paper's fine-tuning scenarios x inits x folds (resumable, "
              "shardable with --config.shard=i/n); writes results.csv."),
    "report": (_report, "AUCs with DeLong CIs, paired DeLong tests and gains between inits, from "
               "a sweep (or run) directory: report.md, report.json, PNGs."),
    "audit": (_audit, "RadImageNet-minus-ImageNet AUC gain per scenario under each of two (or "
              "more) sweeps, e.g. protocol=paper vs corrected: how much of the gain survives."),
    "evaluate": (_evaluate, "Evaluate a workdir's checkpoint (latest or --step) on its config's "
                 "evaluation split (or --split); the config is read from the workdir."),
    "gradcam": (_gradcam, "Grad-CAM maps, Dice against lesion masks and statistics between two "
                "models."),
    "convert": (_convert, "Convert a Keras .h5 weight file into an Orbax checkpoint."),
    "export": (_export, "Export a model (Keras .h5, Orbax checkpoint or random) as an exact ONNX "
               "file, backbone or classifier, NHWC or NCHW."),
    "inspect": (_inspect, "Describe what a Keras weight file holds and which model it matches."),
    "build": (_build, "Build a TFDS dataset (TF-free, array_record)."),
}


# Commands that run compiled steps: they keep the steps' buffers mapped (_host_malloc.py).
_STEP_COMMANDS = ("pretrain", "finetune", "sweep", "evaluate", "gradcam")

# ValueError covers unknown names/modes, CheckpointMismatchError and file-format errors;
# FloatingPointError is the NaN/Inf-loss stop; RuntimeError covers SourceFileError in builds.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, RuntimeError,
                PermissionError, NotADirectoryError, IsADirectoryError, ModuleNotFoundError)


def _in_multiprocess_job() -> bool:
  # A command that never imported `distributed` never joined a job (and needs no JAX import here).
  module = sys.modules.get("radimagenet_jax.distributed")
  return module is not None and module.in_multiprocess_job()


def _exit_if_failed_alone(code: int) -> None:
  if _in_multiprocess_job():
    sys.modules["radimagenet_jax.distributed"].exit_if_failed_alone(code)


class _NoOpenCVNotice(logging.Filter):
  """Drops TFDS's "OpenCV is not installed ... Defaulting to PIL" warning: PIL is the decoder we
  use on purpose (no OpenCV in the install), so the line only alarms users."""

  def filter(self, record):
    return not str(record.msg).startswith("OpenCV is not installed")


def quiet_tfds_notices() -> None:
  """Installs the filter on absl's logger (TFDS logs through absl); the commands call it, import
  does not (the package changes no logging configuration at import)."""
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _NoOpenCVNotice) for f in logger.filters):
    logger.addFilter(_NoOpenCVNotice())


def quiet_closed_loop_noise() -> None:
  """After a checkpoint write fails (a full disk), Orbax's asyncio loop closes while TensorStore's
  native threads still post their callbacks to it; each raises 'RuntimeError: Event loop is
  closed', which the native code reports through sys.unraisablehook (thousands of tracebacks
  buried the one line that says what happened). The commands drop exactly those; every other
  unraisable exception reaches the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "quiet_closed_loop", False):
    return

  def hook(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.quiet_closed_loop = True
  sys.unraisablehook = hook


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: radimagenet-jax <command> [options]\n\ncommands:")
    for name, (_, doc) in _COMMANDS.items():
      print(f"  {name:<10} {doc}")
    print("\n`radimagenet-jax <command> --help` for a command's options.")
    return 0
  if argv[0] not in _COMMANDS:
    print(f"radimagenet-jax: unknown command {argv[0]!r}; valid commands: "
          f"{', '.join(_COMMANDS)}", file=sys.stderr)
    return 2
  # Before JAX starts: the CPU settings (_cpu_tuning.py), malloc's only for commands running steps.
  _cpu_tuning.tune_cpu(host_malloc=argv[0] in _STEP_COMMANDS)
  quiet_tfds_notices()
  quiet_closed_loop_noise()
  from radimagenet_jax.train import preemption
  try:
    _COMMANDS[argv[0]][0](argv[1:])
  except preemption.Preempted as e:
    print(f"radimagenet-jax {argv[0]}: {e}", file=sys.stderr)
    return preemption.EXIT_CODE
  except _USER_ERRORS as e:
    # Bad input (unknown model, mismatched workdir, corrupt file, NaN loss, ...): the message
    # already names the file / value and what was expected; a traceback would only bury it.
    print(f"radimagenet-jax {argv[0]}: error: {e}", file=sys.stderr)
    _exit_if_failed_alone(1)
    return 1
  except OSError as e:  # a full disk or a read-only folder: one line; any other OSError is a bug
    from radimagenet_jax import _files
    line = _files.describe_os_error(e)
    if line is None:
      raise
    print(f"radimagenet-jax {argv[0]}: error: {line}", file=sys.stderr)
    _exit_if_failed_alone(1)
    return 1
  except Exception:  # a bug: in a multi-process job, its traceback and no wait when alone
    if not _in_multiprocess_job():
      raise
    traceback.print_exc()
    _exit_if_failed_alone(1)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
