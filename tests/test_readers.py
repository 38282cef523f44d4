"""readers: DICOM (rescale, compressed syntaxes, MONOCHROME1, errors), windowing, PIL images, NIfTI.

Oracles: pydicom's raw stored values and the uncompressed copy of each compressed file (same
pixels), the closed-form window, PIL / nibabel themselves.
"""
import os

import numpy as np
from PIL import Image
import pytest

from radimagenet_jax.data.build import readers

pydicom = pytest.importorskip("pydicom")
data_store = pytest.importorskip("data_store")
TEST_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
DATA = os.path.join(os.path.dirname(data_store.__file__), "data")


def test_read_dicom_applies_rescale_slope_and_intercept():
  path = os.path.join(TEST_FILES, "CT_small.dcm")
  ds = pydicom.dcmread(path)
  expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  got = readers.read_dicom(path)
  assert got.dtype == np.float32 and float(ds.RescaleIntercept) != 0
  np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("compressed,plain", [("693_J2KR.dcm", "693_UNCR.dcm"),
                                              ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
                                              ("US1_J2KR.dcm", "US1_UNCR.dcm"),
                                              ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm")])
def test_lossless_compressed_syntaxes_decode_to_the_uncompressed_pixels(compressed, plain):
  np.testing.assert_array_equal(readers.read_dicom(os.path.join(DATA, compressed)),
                                readers.read_dicom(os.path.join(DATA, plain)))


def test_jpeg_lossless_process14_decodes_to_the_uncompressed_pixels():
  np.testing.assert_array_equal(readers.read_dicom(os.path.join(TEST_FILES, "SC_rgb_jpeg_gdcm.dcm")),
                                readers.read_dicom(os.path.join(DATA, "SC_rgb.dcm")))


def test_monochrome1_is_inverted_to_higher_is_brighter():
  path = os.path.join(DATA, "RG3_UNCR.dcm")
  raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
  np.testing.assert_array_equal(readers.read_dicom(path), raw.max() + raw.min() - raw)
  np.testing.assert_array_equal(readers.read_dicom(path, invert_monochrome1=False), raw)


def test_read_dicom_frame_selects_one_frame():
  path = os.path.join(DATA, "emri_small.dcm")
  allf = readers.read_dicom(path)
  assert allf.shape == (10, 64, 64)
  np.testing.assert_array_equal(readers.read_dicom(path, frame=3), allf[3])


@pytest.mark.parametrize("name,words", [("MR_truncated.dcm", ["Explicit VR Little Endian",
                                                              "pixel data"]),
                                        ("JPEG-lossy.dcm", ["JPEG Extended", "1.2.840.10008.1.2.4.51"])])
def test_undecodable_dicom_raises_reader_error_naming_file_and_syntax(name, words):
  path = os.path.join(TEST_FILES, name)
  with pytest.raises(readers.ReaderError) as e:
    readers.read_dicom(path)
  assert e.value.path == path and name in str(e.value)
  for w in words:
    assert w in e.value.reason


def test_non_dicom_file_raises_reader_error(tmp_path):
  bad = tmp_path / "x.dcm"
  bad.write_bytes(b"not a dicom file at all")
  with pytest.raises(readers.ReaderError, match="x.dcm"):
    readers.read_dicom(bad)


def test_window_matches_the_closed_form():
  hu = np.array([-1000.0, -160.0, 0.0, 40.0, 80.0, 240.0, 3000.0])
  got = readers.window(hu, center=40, width=400)
  expected = np.round(np.clip((hu - (40 - 200)) / 400, 0, 1) * 255).astype(np.uint8)
  np.testing.assert_array_equal(got, expected)
  assert got.tolist()[:2] == [0, 0] and got[-1] == 255 and got[3] == 128
  with pytest.raises(ValueError, match="width"):
    readers.window(hu, 40, 0)


def test_read_image_modes(tmp_path):
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  Image.fromarray(gray).save(tmp_path / "g.png")
  Image.fromarray(rgb).save(tmp_path / "c.png")
  Image.fromarray(np.dstack([rgb, gray])).save(tmp_path / "a.png")  # RGBA
  Image.fromarray((gray.astype(np.uint16) * 257)).save(tmp_path / "w.png")  # 16-bit
  np.testing.assert_array_equal(readers.read_image(tmp_path / "g.png"), gray)
  np.testing.assert_array_equal(readers.read_image(tmp_path / "c.png"), rgb)
  np.testing.assert_array_equal(readers.read_image(tmp_path / "a.png"), rgb)
  np.testing.assert_array_equal(readers.read_image(tmp_path / "w.png"), gray)
  (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  with pytest.raises(readers.ReaderError, match="t.png"):
    readers.read_image(tmp_path / "t.png")


def test_read_nifti_reorients_to_ras(tmp_path):
  nib = pytest.importorskip("nibabel")
  data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS storage: axis 0 runs right -> left.
  nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
  got, got_affine = readers.read_nifti(tmp_path / "v.nii.gz", return_affine=True)
  np.testing.assert_array_equal(got, data[::-1])
  assert got_affine[0, 0] == 1.0


def test_read_image_refuses_decompression_bombs_from_the_header(tmp_path, monkeypatch):
  from tests.test_safety_build import bomb_png
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(bomb_png())  # 20000 x 20000: above 2x MAX_IMAGE_PIXELS, PIL raises itself
  with pytest.raises(readers.ReaderError, match=r"bomb\.png: image too large.*400000000 pixels"):
    readers.read_image(bomb)
  # Between 1x and 2x the limit PIL only warns and decodes: refused as well.
  Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  with pytest.raises(readers.ReaderError, match=r"10 = 120 pixels, above PIL's limit of 100"):
    readers.read_image(tmp_path / "small.png")


# --------------------------------------------------------- size caps from DICOM / NIfTI headers
def dicom_claiming(tmp_path, src="CT_small.dcm", **header):
  """A copy of a pydicom test file whose header values are replaced (the pixel data is not)."""
  ds = pydicom.dcmread(os.path.join(TEST_FILES, src))
  for keyword, value in header.items():
    setattr(ds, keyword, value)
  path = tmp_path / "claims.dcm"
  ds.save_as(path)
  return path


def nifti_claiming(tmp_path, shape, name="claims.nii.gz", nifti2=False):
  """A NIfTI file whose header says `shape` (float32) followed by only 16 bytes of data."""
  import gzip
  nib = pytest.importorskip("nibabel")
  img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image)(np.zeros((2, 2, 2), np.float32), np.eye(4))
  img.header.set_data_shape(shape)
  path = tmp_path / name
  with (gzip.open if name.endswith(".gz") else open)(path, "wb") as f:
    img.header.write_to(f)
    f.write(b"\0" * (int(img.header["vox_offset"]) - f.tell()) + b"\0" * 16)
  return path


def test_dicom_header_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
  path = dicom_claiming(tmp_path, Rows=65535, Columns=65535, NumberOfFrames=100000)
  with pytest.raises(readers.ReaderError) as e:
    readers.read_dicom(path)
  assert e.value.path == os.fspath(path)
  assert ("Rows x Columns x NumberOfFrames x SamplesPerPixel = 65535 x 65535 x 100000 x 1 = "
          f"{65535 * 65535 * 100000} elements, above the limit of {readers.MAX_VOXELS}"
          in e.value.reason)
  assert "MAX_VOXELS" in e.value.reason and "RADIMAGENET_JAX_MAX_VOXELS" in e.value.reason
  with pytest.raises(readers.ReaderError, match=r"65535 x 65535 x 1 = 4294836225 elements"):
    readers.read_dicom(path, frame=0)  # one frame of 65535 x 65535 is still above 2**30


@pytest.mark.parametrize("name,nifti2,shape", [("v.nii.gz", False, (30000, 30000, 30000)),
                                               ("v.nii", True, (40000, 40000, 40000))])
def test_nifti_header_claiming_a_huge_size_is_refused_before_decoding(tmp_path, name, nifti2,
                                                                      shape):
  path = nifti_claiming(tmp_path, shape, name, nifti2)
  assert os.path.getsize(path) < 2000
  with pytest.raises(readers.ReaderError) as e:
    readers.read_nifti(path)
  assert e.value.path == os.fspath(path)
  n = shape[0]
  assert (f"NIfTI dim = {n} x {n} x {n} = {n ** 3} elements, above the limit of "
          f"{readers.MAX_VOXELS}" in e.value.reason)


def test_dicom_just_under_the_limit_reads_and_just_over_raises(monkeypatch):
  path = os.path.join(DATA, "emri_small.dcm")  # 10 frames of 64 x 64, 1 sample: 40960 elements
  expected = readers.read_dicom(path)
  monkeypatch.setattr(readers, "MAX_VOXELS", 40960)
  np.testing.assert_array_equal(readers.read_dicom(path), expected)
  monkeypatch.setattr(readers, "MAX_VOXELS", 40959)
  with pytest.raises(readers.ReaderError, match=r"64 x 64 x 10 x 1 = 40960 elements, above the "
                     r"limit of 40959"):
    readers.read_dicom(path)
  # With `frame`, only that frame is decoded and capped: 64 x 64 x 1 = 4096.
  np.testing.assert_array_equal(readers.read_dicom(path, frame=3), expected[3])
  monkeypatch.setattr(readers, "MAX_VOXELS", 4095)
  with pytest.raises(readers.ReaderError, match=r"\(one frame\) = 64 x 64 x 1 = 4096 elements"):
    readers.read_dicom(path, frame=3)
  monkeypatch.setattr(readers, "MAX_VOXELS", 0)  # 0: no limit
  np.testing.assert_array_equal(readers.read_dicom(path), expected)


def test_nifti_just_under_the_limit_reads_and_just_over_raises(tmp_path, monkeypatch):
  nib = pytest.importorskip("nibabel")
  data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 1.0, 1.0])), tmp_path / "v.nii.gz")
  monkeypatch.setattr(readers, "MAX_VOXELS", 24)
  np.testing.assert_array_equal(readers.read_nifti(tmp_path / "v.nii.gz"), data[::-1])
  monkeypatch.setattr(readers, "MAX_VOXELS", 23)
  with pytest.raises(readers.ReaderError, match=r"v\.nii\.gz: NIfTI dim = 2 x 3 x 4 = 24 elements, "
                     r"above the limit of 23"):
    readers.read_nifti(tmp_path / "v.nii.gz")


def test_max_voxels_environment_variable(monkeypatch):
  monkeypatch.delenv("RADIMAGENET_JAX_MAX_VOXELS", raising=False)
  assert readers._max_voxels_from_env() == 1 << 30
  monkeypatch.setenv("RADIMAGENET_JAX_MAX_VOXELS", "2_000_000_000")
  assert readers._max_voxels_from_env() == 2_000_000_000
  monkeypatch.setenv("RADIMAGENET_JAX_MAX_VOXELS", "lots")
  with pytest.raises(ValueError, match="RADIMAGENET_JAX_MAX_VOXELS must be an integer.*'lots'"):
    readers._max_voxels_from_env()
