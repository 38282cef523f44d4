"""``radimagenet-jax export``: one model's weights to an ONNX file (``rij.export.to_onnx``).

    radimagenet-jax export --model resnet50 --weights RadImageNet-ResNet50_notop.h5 --out r50.onnx
    radimagenet-jax export --model densenet121 --weights ckpt/finetuned --out d121.onnx --dynamic

--weights: a Keras .h5 file (the backbone: exported notop by default), an Orbax checkpoint folder
(a fine-tuned model: exported with its head, class names and preprocessing by default; a ``convert``
output has no head and is exported notop) or nothing (random weights, e.g. to try a runtime).
The weights are read by the loaders ``rij.models.create`` uses (``rij.keras_io.load_h5``,
``rij.checkpoints.load_variables``) without building a randomly initialised model first, which on
2 CPU cores costs a minute per model and is not exported.
"""
from __future__ import annotations

import argparse
import os

import radimagenet_jax as rij
from radimagenet_jax.export import onnx_export

DEFAULT_RANDOM_CLASSES = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", required=True,
                      help="resnet50 | densenet121 | inception_v3 | inception_resnet_v2")
  parser.add_argument("--weights", default=None,
                      help="Keras .h5 file | Orbax checkpoint folder | omit for random weights")
  parser.add_argument("--out", required=True, help="the ONNX file to write, e.g. model.onnx")
  top = parser.add_mutually_exclusive_group()
  top.add_argument("--head", dest="head", action="store_true", default=None,
                   help="GAP + Dense 'predictions' -> logits (default for checkpoints with a head "
                        "and for random weights)")
  top.add_argument("--notop", dest="head", action="store_false",
                   help="the last feature map, as the official notop files (default for .h5)")
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--image_size", type=int, default=None,
                    help="static input size (default 224 / 299, the checkpoint's image_size)")
  size.add_argument("--dynamic", action="store_true",
                    help="dynamic batch, height and width instead of a static size")
  parser.add_argument("--layout", choices=onnx_export.LAYOUTS, default=onnx_export.DEFAULT_LAYOUT,
                      help=f"input layout (default {onnx_export.DEFAULT_LAYOUT}, the layout of "
                           f"rij.data.preprocess); NCHW for PyTorch-style callers")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="fix the batch dimension (default: dynamic)")
  parser.add_argument("--num_classes", type=int, default=None,
                      help=f"classes of a random head (default {DEFAULT_RANDOM_CLASSES})")
  parser.add_argument("--preprocess", default=None,
                      help="preprocessing mode recorded in the file (default: the checkpoint's, "
                           "else radimagenet)")
  parser.add_argument("--opset", type=int, default=onnx_export.DEFAULT_OPSET,
                      help=f"ONNX opset (default {onnx_export.DEFAULT_OPSET})")


def _load(spec, args):
  """(variables, has_trained_head, checkpoint metadata, what the weights are)."""
  if args.weights is None:
    classes = args.num_classes or DEFAULT_RANDOM_CLASSES
    _, variables = rij.models.create(spec.name, num_classes=classes)
    return variables, True, {}, "random init"
  path = os.path.abspath(os.fspath(args.weights))
  if os.path.isdir(path):
    from radimagenet_jax import checkpoints  # lazily: Orbax is only needed here
    meta = checkpoints.read_metadata(path)
    if meta.get("model_name") not in (None, spec.name):  # checked here: load_variables's advice
      raise ValueError(                                  # names --workdir, which export lacks
          f"--weights {args.weights}: a {meta['model_name']} checkpoint, but --model "
          f"{args.model} was given; pass --model {meta['model_name']} to export it.")
    variables = checkpoints.load_variables(path, spec.name)
    has_head = "predictions" in variables.get("params", {})
    return variables, has_head, meta, path
  if os.path.isfile(path):
    return rij.keras_io.load_h5(path, spec.name), False, {}, path
  raise FileNotFoundError(f"--weights {args.weights}: no such file or folder; expected a Keras "
                          f".h5 file or an Orbax checkpoint folder.")


def portable_name(source: str) -> str:
  """What the weights were, without the writing machine's absolute path: relative to the working
  directory when inside it, else the last two path parts (`run_x/best`, `weights/file.h5`)."""
  if not os.path.isabs(source):
    return source  # 'random init'
  rel = os.path.relpath(source)
  if not rel.startswith(os.pardir):
    return rel.replace(os.sep, "/")
  return "/".join(os.path.normpath(source).split(os.sep)[-2:])


def run(args: argparse.Namespace) -> list[str]:
  """Exports as ``args`` say; prints one line per file and returns the paths written."""
  spec = rij.models.get_spec(args.model)
  onnx_export.check_output_path(args.out)
  variables, has_head, meta, source = _load(spec, args)
  head = has_head if args.head is None else args.head
  if head and not has_head:
    raise ValueError(f"--head: {source} holds no trained classifier ('predictions'); export it "
                     f"with --notop, or give a fine-tuned checkpoint.")
  metadata = {"preprocess": args.preprocess or meta.get("preprocess") or "radimagenet",
              "source": portable_name(source)}
  if head and meta.get("class_names"):
    metadata["class_names"] = list(meta["class_names"])
  image_size = args.image_size
  if image_size is None and not args.dynamic and meta.get("image_size"):
    image_size = int(meta["image_size"])
  model = onnx_export.build_onnx(spec.name, variables, head=head, image_size=image_size,
                                 dynamic=args.dynamic, layout=args.layout,
                                 batch_size=args.batch_size, metadata=metadata, opset=args.opset)
  path = onnx_export.save_atomic(model, args.out)
  print(f"wrote {args.out} ({onnx_export.summary(model)})")
  return [path]
