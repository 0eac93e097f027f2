"""Training processes on the CPU through Detectron2's launch (gloo): two processes run, use
DistributedDataParallel without device_ids, and stay in sync. The machines of a multi-machine
run (deformable_detr/launcher.py) say whom they wait for, meet at --dist-url, or time out
naming the flags instead of waiting in silence."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from detectron2.engine import launch

from deformable_detr.launcher import JoinTimeoutError, check_launch_args, join_processes
from distributed_cases import train_and_compare
from repo_paths import QUICKSTART, REPO


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


# the machines of a multi-machine run


@pytest.mark.parametrize(
    "num_gpus,num_machines,machine_rank,dist_url,timeout,message",
    [
        (0, 1, 0, "auto", 600, r"--num-gpus \(processes per machine\) must be >= 1, got 0"),
        (1, 0, 0, "auto", 600, r"--num-machines must be >= 1, got 0"),
        (1, 2, 2, "tcp://127.0.0.1:9", 600, r"--machine-rank must be in \[0, 1\] .* got 2"),
        (1, 2, -1, "tcp://127.0.0.1:9", 600, r"--machine-rank must be in \[0, 1\]"),
        (1, 2, 0, "auto", 600, r"--dist-url must be tcp://HOST:PORT, .* got 'auto'"),
        (1, 2, 0, "tcp://10.0.0.1", 600, r"--dist-url must be tcp://HOST:PORT"),
        (1, 2, 0, "tcp://10.0.0.1:99999", 600, r"--dist-url must be tcp://HOST:PORT"),
        (1, 2, 0, "tcp://10.0.0.1:9", 0, r"--join-timeout must be a number of seconds > 0"),
        (1, 2, 0, "tcp://10.0.0.1:9", float("nan"), r"--join-timeout must be a number"),
    ],
)
def test_bad_launch_flags_are_named(
    num_gpus, num_machines, machine_rank, dist_url, timeout, message
):
    with pytest.raises(ValueError, match=message):
        check_launch_args(num_gpus, num_machines, machine_rank, dist_url, timeout)


def test_train_net_refuses_bad_launch_flags_as_argument_errors(train_net_dry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_net_dry.cli(
            ["--config-file", QUICKSTART, "--num-machines", "2", "--machine-rank", "2"]
        )
    assert exit_info.value.code == 2
    assert "--machine-rank must be in [0, 1] for --num-machines 2, got 2" in capsys.readouterr().err
    assert train_net_dry.launched == []


def test_a_machine_alone_says_whom_it_waited_for_and_times_out():
    """Machine 0 of 2 hosts the meeting: no other machine comes."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(JoinTimeoutError) as error:
        join_processes(url, 0, 2, num_machines=2, machine_rank=0, timeout_s=1)
    assert time.monotonic() - start < 10  # the 1 s given, and some slack for the store
    message = str(error.value)
    assert message.startswith(
        f"machine 0 of 2 (--machine-rank 0, --num-machines 2): waiting up to 1 s "
        f"(--join-timeout) for machine 1 to join at {url} (--dist-url): timed out, machine 1 "
        f"did not join"
    )
    assert "each with its own --machine-rank in [0, 1]" in message


def test_a_machine_that_cannot_reach_machine_0_times_out():
    url = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    with pytest.raises(JoinTimeoutError, match=r"could not reach machine 0 \(--machine-rank 0\)"):
        join_processes(url, 1, 2, num_machines=2, machine_rank=1, timeout_s=1)


def test_machines_that_all_come_meet():
    """Two machines of one process each, as threads: both get the store, which they share."""
    url, stores = f"tcp://127.0.0.1:{_free_port()}", {}

    def join(rank):
        stores[rank] = join_processes(url, rank, 2, num_machines=2, machine_rank=rank, timeout_s=30)

    threads = [threading.Thread(target=join, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(stores) == [0, 1]
    stores[1].set("from_machine_1", "hello")
    assert stores[0].get("from_machine_1") == b"hello"


def _machine(rank, port, *extra, output=None):
    """train_net.py (or, with output, a launch of distributed_cases.write_world) as machine
    `rank` of 2 on this host."""
    if output is None:
        argv = [os.path.join(REPO, "train_net.py"), "--config-file", QUICKSTART]
        argv += ["--num-machines", "2", "--machine-rank", str(rank)]
        argv += ["--dist-url", f"tcp://127.0.0.1:{port}", *extra, "MODEL.DEVICE", "cpu"]
    else:
        argv = [
            "-c",
            "from deformable_detr.launcher import launch\n"
            "from distributed_cases import write_world\n"
            "if __name__ == '__main__':\n"
            f"    launch(write_world, 1, 2, {rank}, 'tcp://127.0.0.1:{port}', ({output!r},), 60)\n",
        ]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO, "tests"), env.get("PYTHONPATH", "")])
    # CPU processes, as a user runs them: the suite's Triton interpreter (conftest) is not theirs
    env.pop("TRITON_INTERPRET", None)
    return subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow  # a fresh interpreter and its spawned process import torch and Detectron2
def test_train_net_on_one_of_two_machines_says_so_and_times_out():
    port = _free_port()
    machine = _machine(0, port, "--join-timeout", "2")
    _, err = machine.communicate(timeout=180)
    assert machine.returncode != 0
    # said before the wait, on a line of its own, then in the error
    waiting = (
        f"machine 0 of 2 (--machine-rank 0, --num-machines 2): waiting up to 2 s (--join-timeout) "
        f"for machine 1 to join at tcp://127.0.0.1:{port} (--dist-url)"
    )
    assert waiting in err.splitlines()
    assert f"{waiting}: timed out, machine 1 did not join" in err


@pytest.mark.slow  # four interpreters import torch and Detectron2
def test_two_machines_of_one_process_each_form_one_world(tmp_path):
    port = _free_port()
    machines = [_machine(rank, port, output=str(tmp_path)) for rank in (0, 1)]
    for machine in machines:
        _, err = machine.communicate(timeout=240)
        assert machine.returncode == 0, err[-3000:]
    for rank in (0, 1):
        seen = json.load(open(tmp_path / f"rank{rank}.json"))
        assert seen == {"world_size": 2, "ranks": [0, 1]}
