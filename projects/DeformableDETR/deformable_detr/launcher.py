"""Detectron2's launch, with the wait of a multi-machine run for its other machines said and
bounded.

Detectron2's launch gives init_process_group one timeout (30 minutes) both for the processes to
meet and for every collective after: a machine started with --num-machines 2 and no second one
waits that long without a word, then fails with torch's DistStoreError. Here each machine first
says whom it waits for and where, the processes meet at --dist-url within their own timeout
(--join-timeout) or fail with an error naming the flags, and the collectives keep Detectron2's
timeout (an evaluation on the main process may hold the others for long). One machine is
Detectron2's launch unchanged: its processes start together.
"""

import logging
import math
import os
import sys
from datetime import timedelta
from typing import Callable, Optional, Sequence
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = ["JOIN_TIMEOUT_S", "JoinTimeoutError", "check_launch_args", "join_processes", "launch"]

JOIN_TIMEOUT_S = 600.0  # seconds the machines of a run have to meet (--join-timeout)


class JoinTimeoutError(TimeoutError):
    """The processes of a multi-machine run did not all meet at --dist-url in time."""


def check_launch_args(
    num_gpus: int, num_machines: int, machine_rank: int, dist_url: str, join_timeout_s: float
) -> None:
    """Raises ValueError naming the flag (--num-gpus, --num-machines, --machine-rank,
    --dist-url, --join-timeout) whose value cannot make a run."""
    if num_gpus < 1:
        raise ValueError(f"--num-gpus (processes per machine) must be >= 1, got {num_gpus}")
    if num_machines < 1:
        raise ValueError(f"--num-machines must be >= 1, got {num_machines}")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"--machine-rank must be in [0, {num_machines - 1}] for --num-machines "
            f"{num_machines}, got {machine_rank}"
        )
    if not (math.isfinite(join_timeout_s) and join_timeout_s > 0):
        raise ValueError(f"--join-timeout must be a number of seconds > 0, got {join_timeout_s}")
    url = urlparse(dist_url or "")
    if num_machines > 1 and not (url.scheme == "tcp" and url.hostname and _port(url)):
        raise ValueError(
            f"--dist-url must be tcp://HOST:PORT, machine 0's address and a free port, for "
            f"--num-machines {num_machines}, got {dist_url!r}"
        )


def _port(url) -> Optional[int]:
    try:
        return url.port
    except ValueError:  # a port that is not a number or outside [0, 65535]
        return None


def _others(num_machines: int, machine_rank: int) -> str:
    ranks = [str(m) for m in range(num_machines) if m != machine_rank]
    return f"machine{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}"


def _waiting_line(num_machines: int, machine_rank: int, dist_url: str, timeout_s: float) -> str:
    return (
        f"machine {machine_rank} of {num_machines} (--machine-rank {machine_rank}, "
        f"--num-machines {num_machines}): waiting up to {timeout_s:g} s (--join-timeout) for "
        f"{_others(num_machines, machine_rank)} to join at {dist_url} (--dist-url)"
    )


def join_processes(
    dist_url: str,
    rank: int,
    world_size: int,
    num_machines: int,
    machine_rank: int,
    timeout_s: float,
) -> dist.Store:
    """The store at dist_url (tcp://HOST:PORT, hosted by rank 0) once all world_size processes
    have connected to it, within timeout_s; its timeout is then Detectron2's collective one.
    Raises JoinTimeoutError naming the flags when they have not."""
    timeout = timedelta(seconds=timeout_s)
    try:
        store, _, _ = next(dist.rendezvous(dist_url, rank, world_size, timeout=timeout))
    except dist.DistError as e:
        if rank == 0:  # the host: the others never came
            problem = f"{_others(num_machines, machine_rank)} did not join"
        else:
            problem = "this machine could not reach machine 0 (--machine-rank 0) there"
        raise JoinTimeoutError(
            f"{_waiting_line(num_machines, machine_rank, dist_url, timeout_s)}: timed out, "
            f"{problem} ({e}). Start train_net.py on every machine with the same --num-machines "
            f"{num_machines} and --dist-url {dist_url} (machine 0's address), each with its own "
            f"--machine-rank in [0, {num_machines - 1}]; one machine needs --num-machines 1"
        ) from None
    store.set_timeout(DEFAULT_TIMEOUT)
    return store


def _worker(
    local_rank: int,
    main_func: Callable,
    num_gpus: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence,
    join_timeout_s: float,
) -> None:
    """Detectron2's _distributed_worker, the process group made on the store that
    join_processes returns."""
    world_size, rank = num_machines * num_gpus, machine_rank * num_gpus + local_rank
    store = join_processes(dist_url, rank, world_size, num_machines, machine_rank, join_timeout_s)
    has_gpu = torch.cuda.is_available()
    dist.init_process_group(
        backend="nccl" if has_gpu else "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=DEFAULT_TIMEOUT,
    )
    comm.create_local_process_group(num_gpus)
    if has_gpu:
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    main_func(*args)
    # leave together, groups torn down, then exit without the interpreter's teardown: with
    # torch's C++ threads (store, gloo) destroyed at interpreter exit, a two-machine run whose
    # work had ended still aborted there ("terminate called without an active exception",
    # SIGABRT) in 3 of 20 runs on one host after destroy_process_group; 0 of 30 with os._exit
    comm.synchronize()
    dist.destroy_process_group()
    logging.shutdown()  # flushes the log files
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    join_timeout_s: float = JOIN_TIMEOUT_S,
) -> None:
    """Detectron2's launch (main_func(*args) in num_gpus_per_machine processes on each of
    num_machines machines), where the machines meet within join_timeout_s, after this machine
    has printed whom it waits for; arguments as check_launch_args takes them, checked."""
    if num_machines == 1:
        detectron2_launch(main_func, num_gpus_per_machine, 1, 0, dist_url, args)
        return
    print(_waiting_line(num_machines, machine_rank, dist_url, join_timeout_s), file=sys.stderr)
    mp.start_processes(
        _worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            num_gpus_per_machine,
            num_machines,
            machine_rank,
            dist_url,
            args,
            join_timeout_s,
        ),
        daemon=False,
    )
