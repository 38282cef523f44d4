"""Root pytest setup, loaded before any test module imports JAX (tests/ and tfds_builders/).

8 simulated CPU devices so that sharding code paths run as on an 8-accelerator host; Keras 3 (a test
dependency, the parity oracle) on the JAX backend; TFDS never touches the network.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".pytest_tfds"))
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# JAX's persistent compilation cache (the engine turns it on): one per checkout, shared by the
# test workers, so identical steps compiled by several tests compile once; never the user's cache.
os.environ.setdefault("RADIMAGENET_JAX_CACHE", os.path.join(os.path.dirname(__file__),
                                                            ".pytest_cache", "jax_cache"))
# As the commands do, before any test starts a JAX backend: the XLA:CPU flag (importing the package
# sets nothing). Malloc and dispatch stay JAX's defaults in the test process (host_malloc=False).
import radimagenet_jax  # noqa: E402

radimagenet_jax.tune_cpu(host_malloc=False)
