"""Shared fixtures: the demo dataset built once per test session.

`demo_data_dir` is a TFDS data dir holding radimagenet_demo/pretrain and radimagenet_demo/lesion
(about 15 s to build on 2 cores). Tests that need the demo data take it as an argument, e.g.
`tfds.data_source("radimagenet_demo/lesion", split="test", data_dir=demo_data_dir)`.
"""
import pytest


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
  from radimagenet_jax.data import build
  data_dir = tmp_path_factory.mktemp("tfds_demo")
  for config in ("pretrain", "lesion"):
    build.build(f"radimagenet_demo/{config}", data_dir=data_dir, progress=False)
  return str(data_dir)
