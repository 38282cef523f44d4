"""Fine-tuning: the paper's transfer-learning experiment.

- `initial_weights`: starting weights (Keras .h5, Orbax checkpoint or random) with a fresh Keras-initialised head;
- `freeze`: freeze modes (all, head, top<N>, rules) as trainable masks and frozen BatchNorm layers;
- `folds`: cross-validation sources (test fold, validation carved out by patient), split audits;
- `run`: one fine-tuning run on the training engine (`radimagenet-jax finetune`);
- `scenarios`: the 24 scenarios x inits x folds as runs (presets, run names, shards);
- `sweep`: those runs, resumable, with sweep.json and results.csv; `sweep_command` runs them
  (`radimagenet-jax sweep`); `parallel`: groups of runs batched in one step (`parallel_runs`);
- `records`: a run's records checked before the sweep or the report trusts them; results.csv;
- `protocols`: the paper and corrected protocols (the official scripts' semantics, or fixed)
  as config fields.
"""
from radimagenet_jax import _lazy

__getattr__ = _lazy.attach(__name__, ("folds", "freeze", "initial_weights", "parallel", "protocols",
                                      "records", "run", "scenarios", "sweep", "sweep_command"))
