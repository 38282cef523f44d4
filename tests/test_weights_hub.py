"""Weights by name (`keras_io.hub`): download, md5 check, atomic cache, offline mode, time-outs and
the RadImageNet instructions, against a local HTTP server on 127.0.0.1 serving files the tests
write (the URL and hash tables are monkeypatched: nothing here reaches the internet)."""
import contextlib
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import radimagenet_jax as rij
from radimagenet_jax.finetune import initial_weights as init_lib
from radimagenet_jax.keras_io import hub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves server.files[path] (bytes); behaviours by path: '/slow/...' sends half then stalls,
  '/short/...' declares more bytes than it sends, '/drip/...' sends 1 KB every 50 ms."""

  def do_GET(self):  # noqa: N802 (http.server's name)
    self.server.requests.append(self.path)
    body = self.server.files.get(self.path.split("/", 2)[-1])
    if body is None:
      self.send_error(404, "Not Found")
      return
    kind = self.path.split("/")[1]
    self.send_response(200)
    self.send_header("Content-Length", str(len(body) + (100 if kind == "short" else 0)))
    self.end_headers()
    if kind == "slow":
      self.wfile.write(body[:len(body) // 2])
      self.wfile.flush()
      self.server.stop.wait(30)
    elif kind == "drip":
      for i in range(0, len(body), 1024):
        self.wfile.write(body[i:i + 1024])
        self.wfile.flush()
        if self.server.stop.wait(0.05):
          return
    else:
      self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.files, httpd.requests, httpd.stop = {}, [], threading.Event()
  httpd.daemon_threads = True
  httpd.handle_error = lambda *a: None   # a client that went away (the killed download)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
  yield httpd
  httpd.stop.set()
  httpd.shutdown()
  httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(hub.CACHE_ENV, os.fspath(tmp_path / "cache"))
  monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
  return tmp_path / "cache"


def serve(server, monkeypatch, body: bytes, kind="ok", md5=None, model="resnet50"):
  """Points the ImageNet table's `model` entry at the local server; returns (file name, URL)."""
  name = hub.IMAGENET[model][0]
  server.files[name] = body
  url = f"{server.url}/{kind}/{name}"
  monkeypatch.setitem(hub.IMAGENET, model,
                      (name, url, md5 or hashlib.md5(body, usedforsecurity=False).hexdigest()))
  return name, url


def test_download_checks_the_hash_caches_and_then_reads_the_cache(server, cache, monkeypatch,
                                                                 capsys):
  body = os.urandom(300_000)
  name, url = serve(server, monkeypatch, body)
  path = hub.weights_path("resnet50", "imagenet")
  assert path == os.fspath(cache / name) and open(path, "rb").read() == body
  err = capsys.readouterr().err
  assert f"downloading {url} -> {path}" in err and "0.3 / 0.3 MB (100%)" in err  # progress
  assert os.listdir(cache) == [name]                     # no .part left beside it
  requests = len(server.requests)
  assert hub.weights_path("resnet50", "imagenet") == path and len(server.requests) == requests
  monkeypatch.setenv(hub.OFFLINE_ENV, "1")               # offline: the cache still serves
  assert hub.weights_path("resnet50", "imagenet") == path


def test_a_wrong_hash_caches_nothing(server, cache, monkeypatch):
  _, url = serve(server, monkeypatch, b"not the official file", md5="0" * 32)
  with pytest.raises(hub.DownloadError) as e:
    hub.weights_path("resnet50", "imagenet", progress=False)
  digest = hashlib.md5(b"not the official file", usedforsecurity=False).hexdigest()
  assert str(e.value) == (f"{url}: the downloaded file has md5 {digest}, but keras.applications "
                          f"publishes {'0' * 32}; not the official file (or damaged in transit), "
                          f"nothing was cached.")
  assert os.listdir(cache) == []


def test_a_truncated_download_caches_nothing(server, cache, monkeypatch):
  _, url = serve(server, monkeypatch, b"x" * 5000, kind="short")
  with pytest.raises(hub.DownloadError, match=rf"^{url}: .*(ended after 5,000 of 5,100 bytes "
                     r"\(truncated\)|download failed after)"):
    hub.weights_path("resnet50", "imagenet", progress=False)
  assert os.listdir(cache) == []


def test_a_stalled_download_times_out_and_caches_nothing(server, cache, monkeypatch):
  _, url = serve(server, monkeypatch, b"y" * 10_000, kind="slow")
  with pytest.raises(hub.DownloadError, match=rf"^{url}: no data for 0.5 s \(timed out after "
                     r"5,000 bytes\); nothing was cached\."):
    hub.weights_path("resnet50", "imagenet", timeout=0.5, progress=False)
  assert os.listdir(cache) == []


def test_a_missing_file_on_the_server_and_an_unreachable_server(server, cache, monkeypatch):
  name = hub.IMAGENET["resnet50"][0]
  monkeypatch.setitem(hub.IMAGENET, "resnet50", (name, f"{server.url}/ok/nothing.h5", "0" * 32))
  with pytest.raises(hub.DownloadError, match=r"nothing\.h5: HTTP 404 Not Found; nothing was "
                     r"cached\.$"):
    hub.weights_path("resnet50", "imagenet", progress=False)
  with socket_closed_port() as port:
    monkeypatch.setitem(hub.IMAGENET, "resnet50", (name, f"http://127.0.0.1:{port}/x.h5", "0" * 32))
    with pytest.raises(hub.DownloadError, match=r"x\.h5: unreachable \(.*\); nothing was cached\. "
                       r"Download it yourself and put it at .*/cache/resnet50_weights"):
      hub.weights_path("resnet50", "imagenet", progress=False)
  assert os.listdir(cache) == []


@contextlib.contextmanager
def socket_closed_port():
  import socket
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  port = s.getsockname()[1]
  s.close()   # nobody listens there now
  yield port


def test_offline_mode_says_what_to_download_and_where(server, cache, monkeypatch):
  name, url = serve(server, monkeypatch, b"z" * 100)
  monkeypatch.setenv(hub.OFFLINE_ENV, "1")
  requests = len(server.requests)
  with pytest.raises(FileNotFoundError) as e:
    hub.weights_path("resnet50", "imagenet")
  md5 = hashlib.md5(b"z" * 100, usedforsecurity=False).hexdigest()
  assert str(e.value) == (f"weights='imagenet' for resnet50: {name} is not in the cache {cache}, "
                          f"and {hub.OFFLINE_ENV} forbids downloading. Download {url} (md5 {md5}) "
                          f"and put it at {cache / name}.")
  assert len(server.requests) == requests and not cache.exists()


def test_radimagenet_reads_a_given_folder_or_the_cache_else_says_where_the_release_is(cache,
                                                                                      tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    hub.weights_path("inception_resnet_v2", "radimagenet")
  message = str(e.value)
  assert message.startswith("weights='radimagenet' for inception_resnet_v2: "
                            f"RadImageNet-IRV2_notop.h5 is not in the cache {cache}.")
  assert "github.com/BMEII-AI/RadImageNet" in message and "\n" not in message
  assert f"put RadImageNet-IRV2_notop.h5 in {cache}" in message
  assert all(f in message for f in hub.RADIMAGENET.values())
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "RadImageNet-IRV2_notop.h5").write_bytes(b"h5")
  assert hub.weights_path("inception_resnet_v2", "radimagenet", tmp_path / "mine") == \
      os.fspath(tmp_path / "mine" / "RadImageNet-IRV2_notop.h5")
  cache.mkdir()
  (cache / "RadImageNet-ResNet50_notop.h5").write_bytes(b"h5")
  assert hub.weights_path("resnet50", "radimagenet") == os.fspath(cache / "RadImageNet-ResNet50_notop.h5")


def child_download(url, dest):
  """Run in a child process: a download that the test kills midway."""
  hub.download(url, dest, None, progress=False)


def test_a_killed_download_leaves_no_file_under_the_weights_name_and_is_cleaned_up(
    server, cache, monkeypatch):
  name, url = serve(server, monkeypatch, os.urandom(200 * 1024), kind="drip")   # ~10 s
  dest = cache / name
  code = (f"import sys; sys.path.insert(0, {ROOT!r}); from tests import test_weights_hub as t; "
          f"t.child_download({url!r}, {os.fspath(dest)!r})")
  child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
  try:
    deadline = time.monotonic() + 120
    while not (cache.exists() and any(p.endswith(".part") and os.path.getsize(cache / p)
                                      for p in os.listdir(cache))):
      assert child.poll() is None and time.monotonic() < deadline, "the download never started"
      time.sleep(0.05)
    (part,) = os.listdir(cache)
    hub._remove_stale_parts(os.fspath(cache), name)    # in use (locked): left alone
    assert os.listdir(cache) == [part]
  finally:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
  assert os.listdir(cache) == [part] and not dest.exists()
  serve(server, monkeypatch, b"complete")                # the next download removes the .part
  assert hub.weights_path("resnet50", "imagenet", progress=False) == os.fspath(dest)
  assert os.listdir(cache) == [name] and dest.read_bytes() == b"complete"


def test_create_and_finetune_init_take_the_names(server, cache, monkeypatch, tmp_path):
  # A ResNet50 file in Keras's legacy layout (random weights) written by save_h5, downloaded from
  # the local server, then loaded by name.
  _, variables = rij.models.create("resnet50", num_classes=0, rng=__import__("jax").random.key(3))
  rij.keras_io.save_h5(variables, "resnet50", tmp_path / "r50.h5", format="legacy")
  name, _ = serve(server, monkeypatch, (tmp_path / "r50.h5").read_bytes())
  _, loaded = rij.models.create("resnet50", num_classes=0, weights="imagenet")
  np.testing.assert_array_equal(loaded["params"]["conv1_conv"]["kernel"],
                                variables["params"]["conv1_conv"]["kernel"])
  assert os.listdir(cache) == [name]
  # Fine-tuning's init=imagenet: the config's weights/ file is absent, so the cache serves it.
  config = _finetune_config(init="imagenet")
  assert init_lib.resolve(config) == ("imagenet", os.fspath(cache / name))
  assert init_lib.preprocess_mode(_finetune_config(init="imagenet", preprocess="auto"), "imagenet",
                                  os.fspath(cache / name)) == "caffe"
  # init=radimagenet: the config's folder, then the cache; absent from both, the instructions.
  with pytest.raises(FileNotFoundError, match=r"RadImageNet-ResNet50_notop\.h5 is not in "
                     r".*weights or the cache"):
    init_lib.resolve(_finetune_config(init="radimagenet"))


def _finetune_config(**values):
  import importlib.util
  spec = importlib.util.spec_from_file_location("finetune_config",
                                                os.path.join(ROOT, "configs", "finetune.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("busi")
  config.update(values)
  return config
