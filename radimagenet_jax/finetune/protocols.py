"""The two protocols of the paper's experiment: `paper` (the official scripts) and `corrected`.

Each way the official scripts (BMEII-AI/RadImageNet: <task>/<task>_train.py) depart from a sound
protocol is one config field, with the official value one option away (docs/finetuning.md
"Protocols", docs/fidelity.md "Downstream fine-tuning"):

  field             paper (official scripts)           corrected
  official_folds    True: the CSVs' folds as given     False: folds re-drawn by patient
  partial_batch     True: Keras's ceil(n/b) steps      False: whole batches, floor(n/b)
  loss              'keras_bce': clipped BCE, softmax  'softmax_ce': exact cross-entropy
  preprocess        'radimagenet' for every init       'auto': each init's own mode
  carry_over_folds  False (True: breast_train.py's     False: each fold starts afresh
                    leak, folds continue the previous)
  optimizer         'keras_adam': Keras's epsilon      'adam': optax's (epsilon added to the
                    (added to sqrt(v), not sqrt(v_hat)) bias-corrected sqrt(v_hat))

`official_folds` matters only for data sets built with the official folds (`official/<task>`).
`carry_over_folds=True` reproduces breast/breast_train.py, which builds its model once before the
fold loop: fold k starts from fold k-1's last weights (and Adam state), which saw fold k's test
images. It is off in both protocols and must be asked for.

    protocols.apply(config, "paper")      # sets the fields above
    protocols.name_of(config.to_dict())   # 'paper', 'corrected' or 'custom (loss=..., ...)'
"""
from __future__ import annotations

import json
import os

PROTOCOLS = {
    "paper": {"official_folds": True, "partial_batch": True, "loss": "keras_bce",
              "preprocess": "radimagenet", "carry_over_folds": False, "optimizer": "keras_adam"},
    "corrected": {"official_folds": False, "partial_batch": False, "loss": "softmax_ce",
                  "preprocess": "auto", "carry_over_folds": False, "optimizer": "adam"},
}
FIELDS = tuple(k for k in PROTOCOLS["paper"] if k != "optimizer")  # fine-tuning's own fields
DESCRIPTION = {
    "paper": "the official scripts' semantics (official folds, Keras epochs with a partial last "
             "batch, clipped BCE on the softmax output, RadImageNet preprocessing for every init)",
    "corrected": "the corrected protocol (patient-grouped folds, whole batches, exact softmax "
                 "cross-entropy, each init's own preprocessing)",
}


def apply(config, protocol: str) -> None:
  """Sets ``config.protocol`` and the fields of PROTOCOLS[protocol] on a ConfigDict."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}.")
  config.protocol = protocol
  for key, value in PROTOCOLS[protocol].items():
    config[key] = value


def name_of(config: dict) -> str:
  """'paper' / 'corrected' when a run's config (config.json) has every field of that protocol,
  else 'custom (<the fields that differ from the protocol it names>)'; 'unrecorded' when it has
  none of the fields (a run made before the protocols existed: the corrected semantics, but its
  preprocessing was 'auto')."""
  if not any(k in config for k in FIELDS):
    return "unrecorded"
  named = config.get("protocol") if config.get("protocol") in PROTOCOLS else "corrected"
  if config.get("carry_over_folds"):
    return f"{named} + carry_over_folds (the breast script's leak)"
  # preprocess: the run's config.json holds the mode 'auto' resolved to; only 'paper' fixes one.
  differ = [k for k, v in PROTOCOLS[named].items()
            if k in config and config[k] != v and not (k == "preprocess" and v == "auto")]
  if not differ:
    return named
  return f"custom ({named} except " + ", ".join(f"{k}={config[k]!r}" for k in differ) + ")"


def describe(names) -> str:
  """One line for a report: which protocol(s) produced the runs ``names`` (name_of values)."""
  names = sorted(set(names))
  if len(names) == 1:
    return f"Protocol: {names[0]}" + (f": {DESCRIPTION[names[0]]}." if names[0] in DESCRIPTION
                                      else ".")
  return ("Protocol: MIXED, the runs compared were made under different protocols (" +
          "; ".join(names) + "); their numbers are not comparable.")


def report_line(run_dirs) -> str:
  """`describe` of the runs in ``run_dirs``, from each one's config.json (absent: 'unrecorded')."""
  names = []
  for d in run_dirs:
    path = os.path.join(d, "config.json")
    try:
      with open(path) as f:
        names.append(name_of(json.load(f)))
    except (OSError, ValueError):
      names.append("unrecorded")
  return describe(names) if names else "Protocol: no finished runs."
