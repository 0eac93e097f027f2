"""Two training processes on the CPU through Detectron2's launch (gloo): they run, use
DistributedDataParallel without device_ids, and stay in sync."""

import json
import socket

from detectron2.engine import launch

from distributed_cases import train_and_compare


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_stay_in_sync(shapes_root, tmp_path):
    launch(
        train_and_compare,
        2,
        dist_url=f"tcp://127.0.0.1:{_free_port()}",
        args=(shapes_root, str(tmp_path), 4),
    )
    result = json.load(open(tmp_path / "sync.json"))
    assert result["world_size"] == 2
    assert result["ddp"] == "DistributedDataParallel"
    (sum0, abs0), (sum1, abs1) = result["sums"]
    assert sum0 == sum1 and abs0 == abs1  # bitwise the same parameters on both
    assert (tmp_path / "model_final.pth").exists()
