"""`radimagenet-jax gradcam`: Grad-CAM over a data set split with lesion masks, for one or two models.

Outputs in the workdir (a new or empty folder, or a previous gradcam run whose outputs are replaced;
a workdir holding another command's run is refused before anything is written, see checks.py):
  per_image.csv   one row per (image, model): index, id, patient, model, architecture, label, target,
                  predicted, prob_target, dice, iou, map_std, mask_empty, mask_resized,
                  pred_pixels, mask_pixels
  summary.json    settings, counts (images, empty masks, resized masks), per-model Dice/IoU mean and
                  SD, preprocessing and where it came from, with two models the paired
                  statistics (stats.paired_comparison, on per-patient means when the records
                  have a patient_id), held_out (images refused as seen in training, held_out.py)
                  and warnings (collapsed, constant Grad-CAM maps)
  overlays/<model>_<index>.png   heat map, mask and thresholded-region outlines, label, prediction,
                  colour bar, for the first config.num_overlays images
  panel.png       the paper's Figure 5 layout for two models (rows = images with a lesion first)
  config.json     the config used
Over a sweep (``config.sweep``): sweep_cam.py.

Records are read from the TFDS source directly (not through the grain loader) so that the original
image and mask sizes are known; they are resized and preprocessed with the training pipeline's own
functions (transforms.resize, preprocess), so the network sees what it saw in training.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os

import jax
import numpy as np

from radimagenet_jax import _files, models
from radimagenet_jax.data import tfds_source, transforms
from radimagenet_jax.data.preprocess import preprocess, to_rgb
from radimagenet_jax.evaluate import paired as stats
from radimagenet_jax.explain import checks, console, held_out
from radimagenet_jax.explain import gradcam as gc
from radimagenet_jax.train import eval_batches
from radimagenet_jax.explain import pictures as pictures_lib
from radimagenet_jax.explain import regions as sm

ID_KEYS = ("source_id", "file_name", "patient_id")
# A Grad-CAM map whose SD over its pixels is below this is constant: no localisation at all (e.g. a
# 1x1 feature map at a small input, or a collapsed model); its Dice only measures the mask's size.
MAP_STD_TOLERANCE = 1e-3
TARGETS = checks.TARGETS


def _text(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def load_records(config):
  """(source, num_classes) of the configured split; builds the demo data when asked to."""
  source = tfds_source.open_source(config.dataset, config.split, config.data_dir or None,
                                   build=config.build_dataset)
  return source, config.num_classes or len(tfds_source.class_names(source))


def iterate_batches(source, config, preprocess_modes):
  """Yields dicts: 'images' {mode: float32 (B, S, S, 3)}, 'masks' bool (B, S, S), 'labels',
  'ids', 'indices', 'resized' (mask size != image size). The last batch is padded to the batch
  size (flag 'valid') so that one compiled Grad-CAM serves every batch."""
  n = len(source) if not config.max_images else min(config.max_images, len(source))
  size = (config.image_size, config.image_size)
  bs = config.batch_size
  for start in range(0, n, bs):
    idx = list(range(start, min(start + bs, n)))
    raw, masks, labels, ids, resized, patients = [], [], [], [], [], []
    for i in idx:
      rec = source[i]
      if config.mask_key not in rec:
        raise ValueError(f"{config.dataset}[{config.split}] record {i} has no "
                         f"{config.mask_key!r} feature (keys: {sorted(rec)}); set "
                         f"--config.mask_key.")
      image = transforms.decode_image(rec["image"])
      mask = transforms.decode_image(rec[config.mask_key])
      resized.append(mask.shape[:2] != image.shape[:2])
      raw.append(transforms.resize(image, size, config.resize))
      masks.append(transforms.resize(mask.astype(np.uint8), size, "nearest"))
      labels.append(int(rec["label"]))
      key = config.id_key or next((k for k in ID_KEYS if k in rec), None)
      ids.append(_text(rec[key]) if key else str(i))
      patients.append(_text(rec["patient_id"]) if "patient_id" in rec else None)
    valid = len(idx)
    # Grey images become 3 channels here (as the preprocessing would), so grey and colour mix;
    # the short last batch is padded by the one rule of train/eval_batches.py.
    stack = eval_batches.pad({"image": np.stack([to_rgb(r) for r in raw])}, bs)["image"]
    yield {"images": {m: np.asarray(preprocess(stack, m), np.float32) for m in preprocess_modes},
           "masks": sm.prepare_masks(masks, size)[0], "labels": np.asarray(labels, np.int32),
           "patients": patients,
           # the split's own indices (a held_out.View holds some of its records)
           "ids": ids, "indices": [source.indices[i] for i in idx]
           if isinstance(source, held_out.View) else idx, "resized": np.asarray(resized, bool), "valid": valid}


def class_names(source, num_classes: int) -> list[str]:
  """The dataset's label names (TFDS), or '0', '1', ... for a source without dataset_info."""
  try:
    names = [str(n) for n in tfds_source.class_names(source)]
  except AttributeError:
    names = []
  return names + [str(i) for i in range(len(names), num_classes)]


def _create(plans, num_classes):
  """Builds each model and loads its weights (every load error comes before anything is written).
  A Keras file's classifier is kept when it has the data set's class count (a fine-tuned model)."""
  out = []
  for p in plans:
    info = p["info"] or {}
    keep = True if info.get("kind") == "keras" and info.get("num_classes") == num_classes else None
    model, variables = models.create(p["name"], num_classes=num_classes, load_head=keep,
                                     weights=p["weights"] or None, rng=jax.random.key(p["seed"]))
    out.append(dict(p, model=model, variables=variables,
                    weights=p["weights"] or f"random init (seed {p['seed']})"))
  return out


def _summary_block(dice, iou, empty, include_empty):
  keep = np.ones_like(empty) if include_empty else ~empty
  return {"dice": stats.describe(dice[keep]), "iou": stats.describe(iou[keep]),
          "empty_masks": {"n": int(empty.sum()),
                          "dice_mean": float(dice[empty].mean()) if empty.any() else None}}


def run(config, workdir: str, verbose: bool = False):
  """Runs the configured Grad-CAM evaluation; returns the summary dict (also in summary.json).

  Everything is checked before anything is written: the settings, the workdir (never another
  command's run), the models, their weights, layers and preprocessing, the data split. With
  ``verbose`` (the command) it prints progress, a summary and the files written.
  """
  checks.check_config(config)
  checks.check_workdir(workdir)
  plans = checks.model_plans(config)
  source, num_classes = load_records(config)
  checks.check_source(source, config)
  source, seen = held_out.held_out(source, config, plans)
  names = class_names(source, num_classes)
  models_ = _create(plans, num_classes)
  n = len(source) if not config.max_images else min(config.max_images, len(source))
  with console.Reporter(n, verbose) as reporter:
    if seen["n_refused"]:
      (reporter.line if verbose else logging.warning)(f"gradcam: {seen['n_refused']} of {seen['n_checked']} images are in the "
                    f"training or validation set of {', '.join(seen['splits'])}: "
                    + ("KEPT (allow_seen_images=True), their Dice is optimistic" if seen["allowed"]
                       else "refused, only held-out images are explained"))
    if verbose:
      for m in models_:
        reporter.line(f"gradcam: {m['label']} = {m['name']} ({m['weights']}), preprocess "
                      f"{m['preprocess']} ({m['preprocess_origin']}), layer {m['layer']}")
    result = _compute(source, config, models_, reporter)
  summary = dict(_summary(config, models_, *result[:3], patients=result[5]), held_out=seen,
                 warnings=map_warnings(result[3], "model"))
  files = _write(workdir, config, models_, summary, result[3], result[4], names)
  if verbose:
    for line in ([f"WARNING: {w}" for w in summary["warnings"]] + console.summary_lines(summary)
                 + [f"wrote {f}" for f in files]):
      print(line)
  logging.info("Grad-CAM summary: %s", json.dumps(summary["models"]))
  return summary


def _compute(source, config, models_, reporter):
  """(per-model dice/iou lists, empty, resized, per-image rows, pictures) over the split."""
  modes = sorted({m["preprocess"] for m in models_})
  per = {m["label"]: {"dice": [], "iou": []} for m in models_}
  rows, empty, resized, pictures, patients = [], [], [], [], []
  keep = max(config.num_overlays, 4 * config.panel_rows)
  for batch in iterate_batches(source, config, modes):
    v = batch["valid"]
    seen = {}
    for m in models_:
      x = batch["images"][m["preprocess"]]
      target = np.pad(batch["labels"], (0, len(x) - v)) if config.target == "label" else None
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
      seen[m["label"]] = (maps, dice, pred, probs)
      for j in range(v):
        rows.append({"index": batch["indices"][j], "id": batch["ids"][j],
                     "patient": batch["patients"][j] or "", "model": m["label"],
                     "architecture": m["name"], "label": int(batch["labels"][j]),
                     "target": int(targets[j]), "predicted": int(probs[j].argmax()),
                     "prob_target": float(probs[j, targets[j]]), "dice": float(dice[j]),
                     "iou": float(iou[j]), "map_std": float(maps[j].std()),
                     "mask_empty": bool(empty_b[j]),
                     "mask_resized": bool(batch["resized"][j]), "pred_pixels": int(pred[j].sum()),
                     "mask_pixels": int(batch["masks"][j].sum())})
    reporter.advance(v)
    empty.append(empty_b)
    patients += batch["patients"]
    resized.append(batch["resized"])
    # Keep only what the pictures need (a few images), not every map of the split.
    for j in range(min(v, keep - len(pictures))):
      pictures.append({"index": batch["indices"][j], "id": batch["ids"][j],
                       "image": batch["images"][modes[0]][j], "mask": batch["masks"][j],
                       "label": int(batch["labels"][j]), "empty": bool(empty_b[j]),
                       **{k: {lab: t[i][j] for lab, t in seen.items()}
                          for i, k in enumerate(("maps", "dice", "region", "probs"))}})
  return per, np.concatenate(empty), np.concatenate(resized), rows, pictures, patients


def map_warnings(rows, key: str) -> list[str]:
  """A warning per model (rows grouped by ``key``) whose Grad-CAM maps are mostly constant."""
  out = []
  for name in dict.fromkeys(r[key] for r in rows):
    stds = [r["map_std"] for r in rows if r[key] == name]
    flat = sum(s < MAP_STD_TOLERANCE for s in stds)
    if stds and flat >= len(stds) / 2:
      out.append(f"COLLAPSED GRAD-CAM: {flat} of {len(stds)} maps of {name} are constant (pixel "
                 f"SD < {MAP_STD_TOLERANCE:g}); its Dice measures the mask's size, not where the "
                 f"model looks (a too small input for the layer, or a collapsed model).")
  return out


def _summary(config, models_, per, empty, resized, patients=None):
  """The summary dict; with two models the paired statistics, on per-patient means when the
  records carry a patient id (the unit of independence), else per image."""
  if resized.any():
    logging.warning("%d of %d masks differ in size from their image; resized (nearest).",
                    int(resized.sum()), len(resized))
  summary = {"dataset": config.dataset, "split": config.split, "n_images": int(len(empty)),
             "n_empty_masks": int(empty.sum()), "n_masks_resized": int(resized.sum()),
             "settings": {"threshold": config.threshold, "comparison": config.comparison,
                          "order": config.order, "score": config.score, "target": config.target,
                          "include_empty_masks": config.include_empty_masks,
                          "image_size": config.image_size},
             "models": {}}
  for m in models_:
    d = np.concatenate(per[m["label"]]["dice"])
    i = np.concatenate(per[m["label"]]["iou"])
    summary["models"][m["label"]] = {"architecture": m["name"], "weights": m["weights"],
        "layer": m["layer"], "preprocess": m["preprocess"],
        "preprocess_origin": m["preprocess_origin"],
        **_summary_block(d, i, empty, config.include_empty_masks)}
  if len(models_) == 2:
    keep = np.ones_like(empty) if config.include_empty_masks else ~empty
    by_patient = patients if patients and all(p is not None for p in patients) else None
    a, b = (m["label"] for m in models_)
    kept = None if by_patient is None else [p for p, k in zip(by_patient, keep) if k]
    summary["comparison"] = {
        metric: stats.paired_comparison(np.concatenate(per[a][metric])[keep],
                                        np.concatenate(per[b][metric])[keep],
                                        alpha=config.alpha, names=(a, b), patients=kept)
        for metric in ("dice", "iou")}
  return summary


def _write(workdir, config, models_, summary, rows, pictures, names) -> list[str]:
  """Writes every output; returns the paths written (overlays as one 'overlays/ (N PNG)')."""
  os.makedirs(workdir, exist_ok=True)
  path = lambda name: os.path.join(workdir, name)
  _files.remove_stale_tmp(workdir)  # what a killed gradcam left
  _files.write_text_atomic(path("config.json"), config.to_json_best_effort(indent=2))
  write_csv(path("per_image.csv"), rows)
  _files.write_text_atomic(path("summary.json"), json.dumps(summary, indent=2))
  files = [path("per_image.csv"), path("summary.json")]
  files += pictures_lib.write(workdir, config, [m["label"] for m in models_], pictures, names)
  return files + [path("config.json")]


def write_csv(path, rows, fields=None):
  """``rows`` (dicts) as a CSV file with a header, written atomically."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fields or (list(rows[0]) if rows else ["index"]))
  writer.writeheader()
  writer.writerows(rows)
  _files.write_text_atomic(path, buf.getvalue())
