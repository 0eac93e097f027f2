"""Every reader of images (the mapper of training and evaluation, demo.py, onnx_predict.py) reads
a file through one helper (data/image_file.py): 16-bit grayscale as OpenCV reads it (value >> 8)
where Detectron2's read_image clipped it to white, 8-bit images exactly as Detectron2 reads
them, EXIF orientation applied, and pixels with no 8-bit scale refused by name."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import detection_utils
from PIL import Image

from cli_cases import load_script
from data_cases import H, W, image_record
from deformable_detr.data import DetrDatasetMapper, read_image
from repo_paths import EXPORT_TOOL, QUICKSTART, REPO


def _gray16(path):
    """A 16-bit grayscale ramp over the whole range, written by OpenCV (PNG, TIFF or PGM)."""
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    assert cv2.imwrite(str(path), ramp)
    return str(path)


def _cv2_rgb(path):
    """The independent reference: OpenCV's reading, as RGB."""
    return cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.mark.parametrize("ext", ["png", "tif", "pgm"])  # PIL modes I;16, I;16 and I
def test_16bit_grayscale_is_read_as_opencv_reads_it(tmp_path, ext):
    path = _gray16(tmp_path / f"gray16.{ext}")
    expected = _cv2_rgb(path)
    assert expected.max() == 255 and expected.min() == 0  # the ramp spans 8 bits too
    np.testing.assert_array_equal(read_image(path, "RGB"), expected)
    np.testing.assert_array_equal(read_image(path, "BGR"), expected[:, :, ::-1])


def test_16bit_grayscale_reaches_the_model_as_opencv_reads_it(tmp_path, quick_cfg):
    # Detectron2's read_image gave 255 for every value above 255: a nearly white image
    path = _gray16(tmp_path / "gray16.png")
    for is_train in (False, True):
        opts = ["INPUT.RANDOM_FLIP", "none"]  # the training resize keeps 128 x 160 too
        out = DetrDatasetMapper(quick_cfg(opts), is_train)(image_record(path))
        expected = torch.from_numpy(np.ascontiguousarray(_cv2_rgb(path).transpose(2, 0, 1)))
        assert torch.equal(out["image"], expected)


def _exif_rotated_jpeg(path):
    """A 48 x 64 JPEG whose EXIF orientation (6) says: turn 90 degrees clockwise."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif)
    return str(path)


def _eight_bit(path, mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    rgb.convert(mode).save(path)
    return str(path)


@pytest.mark.parametrize("format", ["RGB", "BGR", "L", "YUV-BT.601"])
def test_8bit_images_are_read_exactly_as_detectron2_reads_them(tmp_path, format):
    files = [
        _exif_rotated_jpeg(tmp_path / "turned.jpg"),
        *(_eight_bit(tmp_path / f"{mode}.png", mode) for mode in ("RGB", "RGBA", "L", "P", "LA")),
    ]
    for path in files:
        ours = read_image(path, format)
        np.testing.assert_array_equal(ours, detection_utils.read_image(path, format))
    assert read_image(files[0], "RGB").shape == (64, 48, 3)  # turned


def test_float_pixels_are_refused_by_name(tmp_path):
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(path)
    with pytest.raises(ValueError, match=r"float\.tif' has float32 pixels \(PIL mode 'F'.*8-bit"):
        read_image(path, "RGB")


def test_demo_reads_images_with_the_shared_reader(tmp_path, shapes_root, monkeypatch):
    path = _gray16(tmp_path / "gray16.png")
    demo = load_script("demo.py")
    seen = []
    monkeypatch.setattr(demo, "draw", lambda p, m, bgr, *args: seen.append(bgr) or (bgr, 0))
    demo.main(["--config-file", QUICKSTART, "--input", path])
    np.testing.assert_array_equal(seen[0], _cv2_rgb(path)[:, :, ::-1])


def test_export_tool_reads_its_sample_image_with_the_shared_reader(tmp_path, quick_cfg):
    """export_model.py --sample-image: a 16-bit PNG as OpenCV reads it (H x W is the quickstart's
    test size, so the resize keeps it)."""
    path = _gray16(tmp_path / "gray16.png")
    image = load_script(EXPORT_TOOL).sample_image(quick_cfg(), path)
    expected = torch.from_numpy(np.ascontiguousarray(_cv2_rgb(path).transpose(2, 0, 1))).float()
    assert torch.equal(image, expected)


def test_the_image_file_module_imports_neither_torch_nor_detectron2():
    """onnx_predict.py loads it by its path, on machines without torch."""
    module = os.path.join(REPO, "projects", "DeformableDETR", "deformable_detr", "data")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {module!r} + '/image_file.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert not {'torch', 'detectron2'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
