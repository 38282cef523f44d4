"""README.md and the docs pages as a user meets them: every ```python block runs, every
`radimagenet-jax` line parses, and the docs site builds with warnings as errors.

Each python block runs in a fresh subprocess, as a user would paste it: cwd a new folder holding
stand-ins for the files a user downloads that the snippets name (`RadImageNet-<Model>_notop.h5`,
keras.applications `<model>_weights_tf_dim_ordering_tf_kernels_notop.h5`: random weights in the
official layout, `save_h5(format="legacy")`, notop), HOME a new folder whose `tensorflow_datasets`
(also $TFDS_DATA_DIR) holds the demo data, PYTHONPATH the repository, and one plain CPU device.
A block that needs something unavailable is marked in the README by the line right before it:
    <!-- snippet: skip (reason) -->
and reported as skipped with that reason. ```bash lines that start with `radimagenet-jax ` are
parsed, not run: the command exists, its --config file and variant load, its --config.KEY overrides
name existing fields, and (argparse commands) its --flags are in the command's --help.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
PAGES = [README] + sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
SKIP = re.compile(r"^<!--\s*snippet:\s*skip\s*\((.*)\)\s*-->$")
TIMEOUT_S = 600
# Files users download, by the name the release gives them -> model.
RELEASE_NAMES = {"resnet50": "ResNet50", "densenet121": "DenseNet121",
                 "inception_v3": "InceptionV3", "inception_resnet_v2": "IRV2"}
DOWNLOADS = {**{f"RadImageNet-{v}_notop.h5": k for k, v in RELEASE_NAMES.items()},
             **{f"{k}_weights_tf_dim_ordering_tf_kernels_notop.h5": k for k in RELEASE_NAMES}}


def blocks(language: str, path: str = README):
  """[(fence line, code, skip reason or None)] of the ```language blocks of a markdown file."""
  lines = open(path, encoding="utf-8").read().splitlines()
  out, i = [], 0
  while i < len(lines):
    if lines[i].strip() == f"```{language}":
      start, body = i + 1, []
      i += 1
      while i < len(lines) and lines[i].strip() != "```":
        body.append(lines[i])
        i += 1
      before = next((l.strip() for l in reversed(lines[:start - 1]) if l.strip()), "")
      m = SKIP.match(before)
      out.append((start, "\n".join(body) + "\n", m.group(1) if m else None))
    i += 1
  return out


def _rel(path):
  return os.path.relpath(path, ROOT)


# (page, line, code, skip reason) of every python block of the README and the docs pages.
PYTHON = [(_rel(p), line, code, skip) for p in PAGES for line, code, skip in blocks("python", p)]


def _random_variables(name: str):
  """Random variables of a model's shapes without compiling anything (jax.eval_shape)."""
  import jax
  import radimagenet_jax as rij
  spec = rij.models.get_spec(name)
  x = jax.ShapeDtypeStruct((1, spec.min_size, spec.min_size, 3), np.float32)
  shapes = jax.eval_shape(lambda: spec.module_cls(num_classes=0).init(
      jax.random.key(0), np.zeros(x.shape, np.float32)))
  rng = np.random.default_rng(0)

  def fill(path, s):
    leaf = path[-1].key
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    scale = np.sqrt(1.0 / np.prod(s.shape[:-1])) if leaf == "kernel" else 0.1
    return (rng.normal(0, 1, s.shape) * scale).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, {k: shapes[k] for k in ("params", "batch_stats")})


@pytest.fixture(scope="session")
def downloads(tmp_path_factory):
  """Stand-ins for the downloaded files that the python blocks name (made once, linked per run)."""
  import radimagenet_jax as rij
  d = tmp_path_factory.mktemp("downloads")
  text = "".join(code for _, _, code, skip in PYTHON if skip is None)
  for file_name, model in DOWNLOADS.items():
    if re.search(rf"[\"']{re.escape(file_name)}[\"']", text):
      rij.keras_io.save_h5(_random_variables(model), model, d / file_name, format="legacy")
  return d


def _env(home, data_dir):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "PYTHONPATH", "TFDS_DATA_DIR", "KERAS_BACKEND")}
  env.update(HOME=str(home), PYTHONPATH=ROOT, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu",
             MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
  return env


@pytest.mark.parametrize("page,line,code,skip", PYTHON, ids=[f"{p}:{l}" for p, l, _, _ in PYTHON])
def test_python_block_runs(page, line, code, skip, downloads, demo_data_dir, tmp_path):
  if skip is not None:
    pytest.skip(f"{page}:{line}: {skip}")
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  home.mkdir()
  cwd.mkdir()
  os.symlink(demo_data_dir, home / "tensorflow_datasets")
  for f in os.listdir(downloads):
    os.symlink(downloads / f, cwd / f)
  (cwd / "snippet.py").write_text(code)
  proc = subprocess.run([sys.executable, "snippet.py"], cwd=cwd, env=_env(home, demo_data_dir),
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  if proc.returncode != 0:
    err = proc.stderr
    first = err[err.find("Traceback"):] if "Traceback" in err else err
    pytest.fail(f"{page}:{line}: the python block failed (exit {proc.returncode}); mark it "
                f"'<!-- snippet: skip (reason) -->' if it needs what a user would not have.\n"
                f"{code}\n--- stderr (first traceback) ---\n{first[:2500]}\n--- stderr (end) ---\n"
                f"{err[-800:]}", pytrace=False)


# ----------------------------------------------------------------------------- command lines
def command_lines(path: str = README):
  """[(line number, argv)] of the `radimagenet-jax ...` commands in ```bash blocks (continuation
  lines joined, comments dropped, `a && radimagenet-jax ...` chains split)."""
  out = []
  for start, code, _ in blocks("bash", path):
    joined, first = "", None
    for k, raw in enumerate(code.splitlines()):
      first = start + 1 + k if not joined else first
      joined += raw.rstrip()[:-1] + " " if raw.rstrip().endswith("\\") else raw
      if raw.rstrip().endswith("\\"):
        continue
      for part in re.split(r"&&|;|\|\|", joined.split(" #")[0]):
        argv = shlex.split(part.strip(), comments=True)
        if argv[:1] == ["radimagenet-jax"]:
          out.append((first, argv[1:]))
      joined = ""
  return out


def _help_text(command: str) -> str:
  from radimagenet_jax import cli
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
    cli._COMMANDS[command][0](["--help"])
  return buf.getvalue()


def check_command(argv) -> None:
  """Raises AssertionError naming what in a `radimagenet-jax` line does not exist."""
  from radimagenet_jax import cli, config_files
  assert argv, "no command after radimagenet-jax"
  command, args = argv[0], argv[1:]
  assert command in cli._COMMANDS, f"unknown command {command!r}; valid: {', '.join(cli._COMMANDS)}"
  config_arg = next((a[len("--config="):] for a in args if a.startswith("--config=")), None)
  if command in cli._DEFAULT_CONFIG:
    if config_arg is None:
      assert command == "evaluate" or "--help" in args, f"{command} without --config"
      return
    file, _, variant = config_arg.partition(":")
    assert os.path.isfile(os.path.join(ROOT, file)), f"no config file {file}"
    config = config_files.load_module(os.path.join(ROOT, file)).get_config(variant or None)
    for a in args:
      if a.startswith("--config."):
        key = a[len("--config."):].split("=", 1)[0]
        node = config
        for part in key.split("."):
          assert part in node, f"--config.{key}: {file} has no field {part!r}"
          node = node[part]
    return
  flags = set(re.findall(r"--[A-Za-z0-9_]+", _help_text(command)))
  for a in args:
    if a.startswith("--"):
      assert a.split("=", 1)[0] in flags, f"{command} has no option {a.split('=', 1)[0]}"
  if command == "build":
    dataset = next(a for a in args if not a.startswith("-")).split("/")[0]
    assert os.path.isdir(os.path.join(ROOT, "tfds_builders", dataset)), f"no builder {dataset!r}"


COMMANDS = [(_rel(p), line, argv) for p in PAGES for line, argv in command_lines(p)]


@pytest.mark.parametrize("page,line,argv", COMMANDS, ids=[f"{p}:{l}" for p, l, _ in COMMANDS])
def test_command_line_names_existing_command_config_and_options(page, line, argv):
  try:
    check_command(argv)
  except AssertionError as e:
    raise AssertionError(f"{page}:{line}: radimagenet-jax {shlex.join(argv)}: {e}") from None


def test_docs_site_builds_with_warnings_as_errors(tmp_path):
  """mkdocs (material theme) builds the manual in strict mode: a broken link or anchor, a page
  missing from the navigation or a markdown error fails the build."""
  proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                         "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                        text=True, timeout=TIMEOUT_S, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for page in PAGES[1:]:
    name = os.path.splitext(os.path.basename(page))[0]
    built = tmp_path / "site" / ("index.html" if name == "index" else f"{name}/index.html")
    assert built.is_file(), f"{_rel(page)} was not built"


def test_the_parsers_find_blocks_skips_and_commands(tmp_path):
  md = tmp_path / "r.md"
  md.write_text("text\n```python\na = 1\n```\n<!-- snippet: skip (needs a GPU) -->\n\n```python\n"
                "b = 2\n```\n```bash\npip install x && radimagenet-jax pretrain --config=a.py:b \\\n"
                "    --workdir=w   # comment\nradimagenet-jax nope\n```\n")
  assert blocks("python", str(md)) == [(2, "a = 1\n", None), (7, "b = 2\n", "needs a GPU")]
  assert command_lines(str(md)) == [(11, ["pretrain", "--config=a.py:b", "--workdir=w"]),
                                    (13, ["nope"])]
  with pytest.raises(AssertionError, match="unknown command 'nope'"):
    check_command(["nope"])
  with pytest.raises(AssertionError, match="has no field 'no_such_key'"):
    check_command(["pretrain", "--config=configs/pretrain.py:demo", "--config.no_such_key=1"])
  with pytest.raises(AssertionError, match="convert has no option --model_name"):
    check_command(["convert", "--model_name", "resnet50"])
