"""Shared helpers of the command-line tests: the scripts at the repository's root, loaded as
modules so that tests call their functions in-process."""

import functools
import importlib.util
import os

import cv2

from repo_paths import REPO


@functools.lru_cache(maxsize=None)
def load_script(file_name):
    """demo.py or train_net.py as a module (loaded once)."""
    spec = importlib.util.spec_from_file_location(
        os.path.splitext(file_name)[0], os.path.join(REPO, file_name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def val_images(shapes_root, n):
    """The first n images of the built-in validation split."""
    folder = os.path.join(shapes_root, "ddetr_shapes_val", "images")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]]


def write_video(path, frames, fps=5):
    """frames (BGR uint8 arrays of one size) as an mp4v video."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
