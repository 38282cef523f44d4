"""Explaining models: Grad-CAM traced by JAX, CAM -> predicted region and Dice, the localisation study.

- `gradcam`: `gradcam(model, variables, x)` / `gradcam_full(...)`, one jitted batched pass;
- `regions`: thresholding a map into a predicted lesion region, Dice / IoU against masks;
- `study`: the `radimagenet-jax gradcam` command (a data set split, one or two models, statistics);
  `held_out`: refuses images a run trained or selected on (its splits.json);
  `sweep_cam`: the command over a sweep (each run on its own held-out images, Figure 5's Dice);
  `checks`: what it validates before writing (settings, workdir, models, weights, layers, data) and
  how it picks each model's preprocessing; `console`: its progress and summary lines;
  `pictures`: its picture titles and files;
- `plots`: overlays and the paper's Figure-5 panel.
"""
from radimagenet_jax import _lazy

__getattr__ = _lazy.attach(__name__, ("checks", "console", "gradcam", "held_out", "pictures",
                                               "plots", "regions", "study", "sweep_cam"))
