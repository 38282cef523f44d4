"""The paper's fine-tuning scenarios x inits x folds as runs: presets, run names, shards.

docs/fidelity.md "Downstream fine-tuning": 24 scenarios per application, 4 CNNs x {unfreeze all at lr
1e-3 and 1e-4; freeze all (head only) at 1e-2 and 1e-3; top 10 layers at 1e-2 and 1e-3}, each for
every initialisation compared (RadImageNet, ImageNet, ...) and every cross-validation fold.

    runs = scenarios.preset_runs("paper", inits=("radimagenet", "imagenet"), folds=range(5))
    runs = scenarios.shard(runs, "0/4")              # this host's quarter (0-based i/n)

`finetune.sweep` runs them, each in runs/<name>/ (e.g. resnet50-top10-lr0.01-radimagenet-fold0).
A user's own list replaces a preset's scenarios: ``parse_scenarios("top10@1e-3,all@1e-4")``, or the
path of a text file with one ``FREEZE@LR`` a line (``#`` comments).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Iterable, NamedTuple, Sequence

from radimagenet_jax.finetune import freeze as freeze_lib

PAPER_MODELS = ("resnet50", "densenet121", "inception_v3", "inception_resnet_v2")


class Scenario(NamedTuple):
  freeze: str
  lr: float


PAPER_SCENARIOS = (Scenario("all", 1e-3), Scenario("all", 1e-4), Scenario("head", 1e-2),
                   Scenario("head", 1e-3), Scenario("top10", 1e-2), Scenario("top10", 1e-3))
# folds None: the caller's (range(5) for cross-validated data sets, (None,) otherwise).
PRESETS = {
    "paper": {"models": PAPER_MODELS, "scenarios": PAPER_SCENARIOS, "folds": None},
    # The same 24 scenarios, meant for protocol=corrected (configs/finetune.py:...,sweep=corrected).
    "corrected": {"models": PAPER_MODELS, "scenarios": PAPER_SCENARIOS, "folds": None},
    "demo": {"models": ("resnet50",), "folds": (0, 1),
             "scenarios": (Scenario("all", 1e-4), Scenario("head", 1e-2), Scenario("top10", 1e-2))},
    # One cheap scenario (the head alone trains): smoke tests of the whole sweep -> report path.
    "tiny": {"models": ("resnet50",), "folds": (0,), "scenarios": (Scenario("head", 1e-2),)},
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._]+")


def _safe(text: str) -> str:
  """``text`` as a file-name part; characters outside [A-Za-z0-9._] -> '_' plus a short hash."""
  safe = _UNSAFE.sub("_", text)
  return safe if safe == text else f"{safe[:40]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a sweep; ``name`` is its directory name."""
  model: str
  freeze: str
  lr: float
  init: str
  fold: int | None = None

  @property
  def name(self) -> str:
    fold = "" if self.fold is None else f"-fold{self.fold}"
    return f"{_safe(self.model)}-{_safe(self.freeze)}-lr{self.lr:g}-{_safe(self.init)}{fold}"

  @property
  def scenario(self) -> Scenario:
    return Scenario(self.freeze, self.lr)

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), name=self.name)


def _model_name(model: str) -> str:
  from radimagenet_jax.models import registry  # pylint: disable=g-import-not-at-top
  return registry.get_spec(model).name


def _scenario(s) -> Scenario:
  freeze, lr = (s["freeze"], s["lr"]) if isinstance(s, dict) else s
  freeze_lib.check_mode(freeze)
  if not float(lr) > 0:
    raise ValueError(f"scenario {s!r}: expected a learning rate > 0, got {lr!r}")
  return Scenario(str(freeze), float(lr))


def _fold(f) -> int | None:
  if f is None or (isinstance(f, int) and f >= 0):
    return f
  raise ValueError(f"fold {f!r}: expected None or an integer >= 0")


def expand(models: Iterable[str], scenarios: Iterable, inits: Iterable[str],
           folds: Iterable[int | None] = (None,)) -> list[RunSpec]:
  """Every (model, scenario, init, fold), in the order init, model, scenario, fold."""
  models, scenarios = [_model_name(m) for m in models], [_scenario(s) for s in scenarios]
  inits, folds = [str(i) for i in inits], [_fold(f) for f in folds]
  runs = [RunSpec(m, s.freeze, s.lr, i, f)
          for i in inits for m in models for s in scenarios for f in folds]
  _check_unique(runs)
  return runs


def _check_unique(runs: Sequence[RunSpec]) -> None:
  seen: dict[str, RunSpec] = {}
  for r in runs:
    if r.name in seen:
      what = "is listed twice" if seen[r.name] == r else f"names two runs ({seen[r.name]} and {r})"
      raise ValueError(f"run name {r.name!r} {what}; expected each run once, with distinct names")
    seen[r.name] = r


def preset_runs(name: str, inits: Iterable[str], folds: Iterable[int | None] | None = None,
                models: Iterable[str] | None = None) -> list[RunSpec]:
  """The runs of preset ``name`` (PRESETS) for ``inits``; ``folds`` / ``models`` override the
  preset's (the paper preset has no folds of its own: default (None,))."""
  if name not in PRESETS:
    raise ValueError(f"unknown sweep preset {name!r}; choices: {', '.join(PRESETS)}")
  p = PRESETS[name]
  folds = folds if folds is not None else (p["folds"] or (None,))
  return expand(models if models is not None else p["models"], p["scenarios"], inits, folds)


def parse_scenarios(text: str) -> list[Scenario]:
  """'top10@1e-3,all@1e-4' (or a file of such items, one a line or comma-separated) -> scenarios.

  FREEZE is a freeze mode (all | head | top<N> | rules:...), LR a learning rate > 0."""
  text = str(text).strip()
  where = "scenarios"
  if text and "@" not in text and os.path.isfile(os.path.expanduser(text)):
    where = os.path.expanduser(text)
    with open(where) as f:
      text = ",".join(line.split("#")[0].strip() for line in f)
  items = [t.strip() for t in text.split(",") if t.strip()]
  if not items:
    raise ValueError(f"{where} {text!r}: no scenario; expected FREEZE@LR items, e.g. "
                     "'top10@1e-3,all@1e-4', or a file with one a line")
  out = []
  for item in items:
    freeze, at, lr = item.rpartition("@")
    try:
      if not at:
        raise ValueError("no '@'")
      out.append(_scenario((freeze.strip(), float(lr))))
    except ValueError as e:
      raise ValueError(f"{where}: scenario {item!r}: expected FREEZE@LR, e.g. top10@1e-3 "
                       f"(FREEZE: all | head | top<N> | rules:...; LR > 0); {e}") from None
  twice = sorted({s for s in out if out.count(s) > 1})
  if twice:
    raise ValueError(f"{where}: scenario(s) {twice} listed twice; expected each once")
  return out


def parse_shard(spec: str) -> tuple[int, int]:
  """'i/n' -> (i, n) with 0 <= i < n."""
  m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
  if not m or not int(m.group(1)) < int(m.group(2)):
    raise ValueError(f"shard {spec!r}: expected 'i/n' with 0 <= i < n, e.g. '0/4'")
  return int(m.group(1)), int(m.group(2))


def shard(runs: Sequence[RunSpec], spec: str) -> list[RunSpec]:
  """Every n-th run starting at i (round robin: shards mix models); shards 0..n-1 partition runs."""
  i, n = parse_shard(spec)
  return list(runs[i::n])
