"""Build-time data code: TF-free TFDS builds (driver), the builders' base class and source readers.

Only `radimagenet-jax build` and the first use of an unbuilt dataset need this package; training and
evaluation read finished datasets through `radimagenet_jax.data.pipeline`.

    from radimagenet_jax.data import build
    build.build("radimagenet_demo/pretrain", data_dir="~/tensorflow_datasets")

- `driver`: name parsing, builder lookup in the `tfds_builders` packages (imported by name, the
  plug-in mechanism: no static import of any builder), atomic cached builds, a plain report.
- `recovery`: the build lock, and the repair of what a killed build left behind (`recover`).
- `tfds_base`: `RadBuilder`, the base class of every builder (error modes, skipped-file lists).
- `once`: `ensure_built`, a missing dataset built once when several JAX processes need it.
- `readers`: DICOM / NIfTI / PNG / JPEG readers and CT windowing used by the builders.
"""
from radimagenet_jax.data.build.driver import (FILE_FORMAT, available_datasets, build,
                                               builder_class, make_builder, parse_name, recover)

__all__ = ["FILE_FORMAT", "available_datasets", "build", "builder_class", "make_builder",
           "parse_name", "recover"]
