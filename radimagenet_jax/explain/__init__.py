"""Explaining models: Grad-CAM traced by JAX, CAM -> predicted region and Dice, the localisation study.

- `gradcam`: `gradcam(model, variables, x)` / `gradcam_full(...)`, one jitted batched pass;
- `regions`: thresholding a map into a predicted lesion region, Dice / IoU against masks;
- `study`: the `radimagenet-jax gradcam` command (a data set split, one or two models, statistics);
- `plots`: overlays and the paper's Figure-5 panel.
"""
from radimagenet_jax import _lazy

__getattr__ = _lazy.attach(__name__, ("gradcam", "plots", "regions", "study"))
