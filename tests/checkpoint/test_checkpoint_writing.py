"""Every converter writes its checkpoint whole or not at all (checkpoint/files.py
save_detectron2_checkpoint): a full disk midway or a folder it may not write to is an error
naming the output, which the tools print as their `error:` line, and never leaves a truncated
file at the output path (a file already there is kept)."""

import errno
import io
import os

import pytest
import torch

from backbone_weights_cases import CASES, random_state_dict, small_family
from deformable_detr.checkpoint import run_converter, save_detectron2_checkpoint

STATE_DICT = {"backbone.w": torch.arange(4096, dtype=torch.float32)}


def _full_disk_midway(monkeypatch):
    """torch.save writes the first half of the file, then the disk is full (ENOSPC), whether it
    is given a path or an open file."""
    real_save = torch.save

    def save(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        half = buffer.getvalue()[: buffer.tell() // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(half)
        else:
            f.write(half)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def _small_swin_file(tmp_path):
    case = CASES["swin"]
    source = tmp_path / "official.pth"
    torch.save(case.wrap(random_state_dict(case.small_tree(), seed=0)), source)
    return source, small_family(case)


def test_the_checkpoint_is_written_whole_with_the_usual_permissions(tmp_path):
    target = tmp_path / "out" / "model.pth"
    save_detectron2_checkpoint(str(target), STATE_DICT, author="test")
    assert os.listdir(target.parent) == ["model.pth"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    loaded = torch.load(target, weights_only=True)
    assert loaded["__author__"] == "test"
    torch.testing.assert_close(loaded["model"]["backbone.w"], STATE_DICT["backbone.w"])


def test_a_full_disk_leaves_no_partial_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "model.pth"
    target.write_bytes(b"the previous checkpoint")
    _full_disk_midway(monkeypatch)
    with pytest.raises(OSError) as error:
        save_detectron2_checkpoint(str(target), STATE_DICT, author="test")
    assert error.value.errno == errno.ENOSPC
    assert f"cannot write the checkpoint {target}: No space left on device" in str(error.value)
    assert target.read_bytes() == b"the previous checkpoint"
    assert os.listdir(tmp_path) == ["model.pth"]


def test_the_tools_report_a_full_disk_as_their_error_line(tmp_path, monkeypatch):
    source, family = _small_swin_file(tmp_path)
    target = tmp_path / "converted.pth"
    _full_disk_midway(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        run_converter([family], "test", "test", ["--input", str(source), "--output", str(target)])
    assert exit_info.value.code == (
        f"error: [Errno {errno.ENOSPC}] cannot write the checkpoint {target}: "
        f"No space left on device"
    )
    assert sorted(os.listdir(tmp_path)) == ["official.pth"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_the_tools_report_a_read_only_folder_as_their_error_line(tmp_path):
    source, family = _small_swin_file(tmp_path)
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    target = folder / "converted.pth"
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_converter(
                [family], "test", "test", ["--input", str(source), "--output", str(target)]
            )
    finally:
        folder.chmod(0o700)
    assert exit_info.value.code == (
        f"error: [Errno {errno.EACCES}] cannot write the checkpoint {target}: Permission denied"
    )
    assert os.listdir(folder) == []
