"""`radimagenet-jax gradcam`: Grad-CAM over a data set split with lesion masks, for one or two models.

Outputs in the workdir:
  per_image.csv   one row per (image, model): index, id, model, architecture, label, target,
                  predicted, prob_target, dice, iou, mask_empty, mask_resized, pred_pixels, mask_pixels
  summary.json    settings, counts (images, empty masks, resized masks), per-model Dice/IoU mean and
                  SD, and with two models the paired statistics (stats.paired_comparison)
  overlays/<model>_<index>.png   heat map + mask outline for the first config.num_overlays images
  panel.png       the paper's Figure 5 layout for two models (rows = images with a lesion)
  config.json     the config used

Records are read from the TFDS source directly (not through the grain loader) so that the original
image and mask sizes are known; they are resized and preprocessed with the training pipeline's own
functions (pipeline.resize, preprocess), so the network sees what it saw in training.
"""
from __future__ import annotations

import csv
import json
import logging
import os

import jax
import numpy as np

from radimagenet_jax import models
from radimagenet_jax.data import pipeline
from radimagenet_jax.data.preprocess import preprocess
from radimagenet_jax.evaluate import paired as stats
from radimagenet_jax.explain import gradcam as gc
from radimagenet_jax.explain import plots
from radimagenet_jax.explain import regions as sm

ID_KEYS = ("source_id", "file_name", "patient_id")
TARGETS = ("predicted", "label")


def _text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def load_records(config):
  """(source, num_classes) of the configured split; builds the demo data when asked to."""
  source = pipeline.open_source(config.dataset, config.split, config.data_dir or None,
                                build=config.build_dataset)
  return source, config.num_classes or len(pipeline.class_names(source))


def iterate_batches(source, config, preprocess_modes):
  """Yields dicts: 'images' {mode: float32 (B, S, S, 3)}, 'masks' bool (B, S, S), 'labels',
  'ids', 'indices', 'resized' (mask size != image size). The last batch is padded to the batch
  size (flag 'valid') so that one compiled Grad-CAM serves every batch."""
  n = len(source) if not config.max_images else min(config.max_images, len(source))
  size = (config.image_size, config.image_size)
  bs = config.batch_size
  for start in range(0, n, bs):
    idx = list(range(start, min(start + bs, n)))
    raw, masks, labels, ids, resized = [], [], [], [], []
    for i in idx:
      rec = source[i]
      if config.mask_key not in rec:
        raise KeyError(f"{config.dataset}[{config.split}] record {i} has no {config.mask_key!r} "
                       f"feature (keys: {sorted(rec)}); set --config.mask_key.")
      image = pipeline.decode_image(rec["image"])
      mask = pipeline.decode_image(rec[config.mask_key])
      resized.append(mask.shape[:2] != image.shape[:2])
      raw.append(pipeline.resize(image, size, config.resize))
      masks.append(pipeline.resize(mask.astype(np.uint8), size, "nearest"))
      labels.append(int(rec["label"]))
      key = config.id_key or next((k for k in ID_KEYS if k in rec), None)
      ids.append(_text(rec[key]) if key else str(i))
    valid = len(idx)
    raw += [np.zeros_like(raw[0])] * (bs - valid)
    # Grey images become 3 channels here (as the preprocessing would), so grey and colour mix.
    stack = np.stack([np.repeat(r[..., None], 3, -1) if r.ndim == 2 else r for r in raw])
    yield {"images": {m: np.asarray(preprocess(stack, m), np.float32) for m in preprocess_modes},
           "masks": sm.prepare_masks(masks, size)[0], "labels": np.asarray(labels, np.int32),
           "ids": ids, "indices": idx, "resized": np.asarray(resized, bool), "valid": valid}


def _models(config, num_classes):
  out = []
  for key in ("model_a", "model_b"):
    m = config[key]
    if not m.name:
      continue
    model, variables = models.create(m.name, num_classes=num_classes, weights=m.weights or None,
                                     rng=jax.random.key(m.seed))
    out.append({"label": m.label or key, "name": models.get_spec(m.name).name, "model": model,
                "weights": m.weights or f"random init (seed {m.seed})",
                "variables": variables, "layer": m.layer or None,
                "preprocess": m.preprocess or config.preprocess})
  if not out:
    raise ValueError("config.model_a.name is empty: nothing to explain.")
  if len(out) == 2 and out[0]["label"] == out[1]["label"]:
    out[1]["label"] += "_2"
  return out


def _summary_block(dice, iou, empty, include_empty):
  keep = np.ones_like(empty) if include_empty else ~empty
  return {"dice": stats.describe(dice[keep]), "iou": stats.describe(iou[keep]),
          "empty_masks": {"n": int(empty.sum()),
                          "dice_mean": float(dice[empty].mean()) if empty.any() else None}}


def run(config, workdir: str):
  """Runs the configured Grad-CAM evaluation; returns the summary dict (also in summary.json)."""
  if config.target not in TARGETS:
    raise ValueError(f"config.target={config.target!r}; expected one of {TARGETS}.")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  source, num_classes = load_records(config)
  models = _models(config, num_classes)
  modes = sorted({m["preprocess"] for m in models})
  per = {m["label"]: {"dice": [], "iou": []} for m in models}
  rows, empty, resized, pictures = [], [], [], []
  for batch in iterate_batches(source, config, modes):
    v = batch["valid"]
    maps_b, dice_b = {}, {}
    for m in models:
      x = batch["images"][m["preprocess"]]
      target = None
      if config.target == "label":
        target = np.pad(batch["labels"], (0, len(x) - v))
      res = gc.gradcam_full(m["model"], m["variables"], x, m["layer"], target, config.score)
      maps = np.asarray(res.maps)[:v]
      pred = sm.predicted_regions(maps=maps, cams=np.asarray(res.cams)[:v],
                                  level=config.threshold, comparison=config.comparison,
                                  order=config.order, size=maps.shape[1:])
      dice, iou, empty_b = sm.dice_iou(pred, batch["masks"])
      probs = np.asarray(jax.nn.softmax(res.logits))[:v]
      targets = np.asarray(res.targets)[:v]
      per[m["label"]]["dice"].append(dice)
      per[m["label"]]["iou"].append(iou)
      maps_b[m["label"]], dice_b[m["label"]] = maps, dice
      for j in range(v):
        rows.append({"index": batch["indices"][j], "id": batch["ids"][j], "model": m["label"],
                     "architecture": m["name"], "label": int(batch["labels"][j]),
                     "target": int(targets[j]), "predicted": int(probs[j].argmax()),
                     "prob_target": float(probs[j, targets[j]]), "dice": float(dice[j]),
                     "iou": float(iou[j]), "mask_empty": bool(empty_b[j]),
                     "mask_resized": bool(batch["resized"][j]), "pred_pixels": int(pred[j].sum()),
                     "mask_pixels": int(batch["masks"][j].sum())})
    empty.append(empty_b)
    resized.append(batch["resized"])
    # Keep only what the pictures need (a few images), not every map of the split.
    for j in range(v):
      if len(pictures) < max(config.num_overlays, 4 * config.panel_rows):
        pictures.append({"index": batch["indices"][j], "id": batch["ids"][j],
                         "image": batch["images"][modes[0]][j], "mask": batch["masks"][j],
                         "empty": bool(empty_b[j]),
                         "maps": {k: a[j] for k, a in maps_b.items()},
                         "dice": {k: float(a[j]) for k, a in dice_b.items()}})
  empty = np.concatenate(empty)
  resized = np.concatenate(resized)
  if resized.any():
    logging.warning("%d of %d masks differ in size from their image; resized (nearest).",
                    int(resized.sum()), len(resized))
  _write_csv(os.path.join(workdir, "per_image.csv"), rows)
  summary = {"dataset": config.dataset, "split": config.split, "n_images": int(len(empty)),
             "n_empty_masks": int(empty.sum()), "n_masks_resized": int(resized.sum()),
             "settings": {"threshold": config.threshold, "comparison": config.comparison,
                          "order": config.order, "score": config.score, "target": config.target,
                          "include_empty_masks": config.include_empty_masks,
                          "image_size": config.image_size},
             "models": {}}
  for m in models:
    d = np.concatenate(per[m["label"]]["dice"])
    i = np.concatenate(per[m["label"]]["iou"])
    summary["models"][m["label"]] = {"architecture": m["name"], "weights": m["weights"],
        "layer": m["layer"] or gc.default_layer(m["model"]), "preprocess": m["preprocess"],
        **_summary_block(d, i, empty, config.include_empty_masks)}
  if len(models) == 2:
    keep = np.ones_like(empty) if config.include_empty_masks else ~empty
    a, b = (m["label"] for m in models)
    summary["comparison"] = {
        metric: stats.paired_comparison(np.concatenate(per[a][metric])[keep],
                                        np.concatenate(per[b][metric])[keep],
                                        alpha=config.alpha, names=(a, b))
        for metric in ("dice", "iou")}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _write_pictures(workdir, config, models, pictures, plots)
  logging.info("Grad-CAM summary: %s", json.dumps(summary["models"]))
  return summary


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["index"])
    writer.writeheader()
    writer.writerows(rows)


def _write_pictures(workdir, config, models, pictures, plots):
  labels = [m["label"] for m in models]
  for p in pictures[:config.num_overlays]:
    for label in labels:
      plots.overlay(p["image"], p["maps"][label], p["mask"], cmap=config.colormap,
                    title=f"{label} {p['id']}  Dice {p['dice'][label]:.2f}",
                    path=os.path.join(workdir, "overlays", f"{label}_{p['index']:05d}.png"))
  if len(models) == 2 and config.panel_rows:
    # Images with a lesion first, as in the paper's figure.
    rows = sorted(pictures, key=lambda p: p["empty"])[:config.panel_rows]
    a, b = labels
    plots.panel([p["image"] for p in rows], [p["mask"] for p in rows],
                [p["maps"][a] for p in rows], [p["maps"][b] for p in rows], names=(a, b),
                dice_a=[p["dice"][a] for p in rows], dice_b=[p["dice"][b] for p in rows],
                row_titles=[str(p["id"]) for p in rows], cmap=config.colormap,
                path=os.path.join(workdir, "panel.png"))
