"""demo.py draws predictions on images (files and globs) and on a short generated video."""
import os
import runpy
import sys

import cv2
import numpy as np
import pytest

from training_cases import REPO

DEMO = os.path.join(REPO, "demo.py")


def _run_demo(argv):
    old = sys.argv
    sys.argv = [DEMO] + argv
    try:
        runpy.run_path(DEMO, run_name="__main__")
    finally:
        sys.argv = old


def _val_images(shapes_root, n):
    folder = os.path.join(shapes_root, "ddetr_shapes_val", "images")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]]


def test_demo_draws_pictures_for_images(shapes_root, tmp_path):
    images = _val_images(shapes_root, 3)
    out = tmp_path / "pictures"
    pattern = os.path.join(os.path.dirname(images[0]), "0000[0-2].jpg")
    _run_demo(["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
               "--input", pattern, "--output", str(out), "--confidence-threshold", "0.0"])
    written = sorted(os.listdir(out))
    assert written == [os.path.basename(p) for p in images]
    for name in written:
        picture = cv2.imread(str(out / name))
        assert picture.shape == cv2.imread(images[0]).shape
        # boxes and labels were drawn: the picture differs from the input
        assert np.abs(picture.astype(int) - cv2.imread(str(os.path.join(
            os.path.dirname(images[0]), name))).astype(int)).sum() > 0


def test_demo_draws_a_video(shapes_root, tmp_path):
    video_in = str(tmp_path / "clip.mp4")
    frames = [cv2.imread(p) for p in _val_images(shapes_root, 4)]
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(video_in, cv2.VideoWriter_fourcc(*"mp4v"), 5, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    video_out = str(tmp_path / "out.mp4")
    _run_demo(["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
               "--video-input", video_in, "--output", video_out, "--confidence-threshold", "0.0"])
    capture = cv2.VideoCapture(video_out)
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == len(frames)


def test_demo_input_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _run_demo(["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
                   "--input", str(tmp_path / "*.jpg"), "--output", str(tmp_path)])
