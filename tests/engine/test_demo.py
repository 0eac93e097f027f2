"""demo.py draws predictions on images (files and globs) and on a short generated video, one
picture per input, in output folders it creates."""

import os
import runpy
import sys

import cv2
import numpy as np
import pytest

from cli_cases import load_script, val_images, write_video
from repo_paths import QUICKSTART, REPO

DEMO = os.path.join(REPO, "demo.py")


def _run_demo(argv):
    old = sys.argv
    sys.argv = [DEMO] + argv
    try:
        runpy.run_path(DEMO, run_name="__main__")
    finally:
        sys.argv = old


def _count_frames(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def test_demo_draws_pictures_for_images(shapes_root, tmp_path):
    images = val_images(shapes_root, 3)
    out = tmp_path / "pictures"
    pattern = os.path.join(os.path.dirname(images[0]), "0000[0-2].jpg")
    _run_demo(
        [
            "--config-file",
            QUICKSTART,
            "--input",
            pattern,
            "--output",
            str(out),
            "--confidence-threshold",
            "0.0",
        ]
    )
    written = sorted(os.listdir(out))
    assert written == [os.path.basename(p) for p in images]
    for name in written:
        picture = cv2.imread(str(out / name))
        assert picture.shape == cv2.imread(images[0]).shape
        # boxes and labels were drawn: the picture differs from the input
        assert (
            np.abs(
                picture.astype(int)
                - cv2.imread(str(os.path.join(os.path.dirname(images[0]), name))).astype(int)
            ).sum()
            > 0
        )


def test_demo_draws_a_video(shapes_root, tmp_path):
    video_in = tmp_path / "clip.mp4"
    frames = [cv2.imread(p) for p in val_images(shapes_root, 4)]
    write_video(video_in, frames)
    video_out = str(tmp_path / "out.mp4")
    _run_demo(
        [
            "--config-file",
            QUICKSTART,
            "--video-input",
            str(video_in),
            "--output",
            video_out,
            "--confidence-threshold",
            "0.0",
        ]
    )
    assert _count_frames(video_out) == len(frames)


def test_demo_input_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _run_demo(
            [
                "--config-file",
                QUICKSTART,
                "--input",
                str(tmp_path / "*.jpg"),
                "--output",
                str(tmp_path),
            ]
        )


def test_demo_keeps_one_picture_per_input_when_file_names_clash(shapes_root, tmp_path):
    images = val_images(shapes_root, 2)
    inputs = [tmp_path / "in" / "a" / "x.jpg", tmp_path / "in" / "b" / "x.jpg"]
    for source, copy in zip(images, inputs):
        copy.parent.mkdir(parents=True)
        copy.write_bytes(open(source, "rb").read())
    out = tmp_path / "pictures"
    load_script("demo.py").main(
        [
            "--config-file",
            QUICKSTART,
            "--input",
            *map(str, inputs),
            "--output",
            str(out),
            "--confidence-threshold",
            "0.0",
        ]
    )
    written = sorted(
        os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out) for f in files
    )
    assert written == [os.path.join("a", "x.jpg"), os.path.join("b", "x.jpg")]
    a, b = (cv2.imread(str(out / name)) for name in written)
    # each picture is its own input's: the two inputs differ, and so do their pictures
    assert not np.array_equal(cv2.imread(images[0]), cv2.imread(images[1]))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("output", ["new/deeper/picture.jpg", "new folder" + os.sep])
def test_demo_creates_the_folder_of_its_output(shapes_root, tmp_path, output):
    (image,) = val_images(shapes_root, 1)
    # os.path.join, not pathlib: it keeps the trailing separator
    load_script("demo.py").main(
        ["--config-file", QUICKSTART, "--input", image, "--output", os.path.join(tmp_path, output)]
    )
    expected = os.path.join(tmp_path, output)
    if output.endswith(os.sep):
        expected = os.path.join(expected, os.path.basename(image))
    picture = cv2.imread(expected)
    assert picture is not None and picture.shape == cv2.imread(image).shape


def test_demo_creates_the_folder_of_its_video(shapes_root, tmp_path):
    video_in = tmp_path / "clip.mp4"
    write_video(video_in, [cv2.imread(p) for p in val_images(shapes_root, 2)])
    video_out = tmp_path / "new" / "out.mp4"
    load_script("demo.py").main(
        ["--config-file", QUICKSTART, "--video-input", str(video_in), "--output", str(video_out)]
    )
    assert _count_frames(video_out) == 2


def test_demo_scale_draws_the_image_that_many_times_larger(shapes_root, tmp_path):
    (image,) = val_images(shapes_root, 1)
    out = tmp_path / "picture.png"
    # threshold 1: no detection is drawn, so the picture is the image alone, enlarged
    load_script("demo.py").main(
        ["--config-file", QUICKSTART, "--input", image, "--output", str(out)]
        + ["--confidence-threshold", "1", "--scale", "3"]
    )
    bgr = cv2.imread(image)
    picture = cv2.imread(str(out))
    assert picture.shape == (3 * bgr.shape[0], 3 * bgr.shape[1], 3)
    # averaged over its 3x3 blocks, the picture is the image: 3.0 levels apart on average here
    # (matplotlib moves some block edges by a pixel), where the image moved by one pixel is 9-10
    shrunk = cv2.resize(picture, bgr.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - bgr).mean() < 4.5
