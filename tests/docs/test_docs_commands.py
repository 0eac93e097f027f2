"""The shell blocks of README.md and docs/ marked quick (info string `bash quick`) run and exit
with 0, as a reader runs them from a clone; and every entry point's --help is among them, so
that a new tool is documented with its options."""

import glob
import os
import re
import subprocess
import sys

import pytest

from docs_cases import PAGES, QUICK, blocks, read
from repo_paths import REPO

TIMEOUT_S = 300  # a 2-iteration training with its evaluation takes ~25 s on 2 cores
ENTRY_POINTS = ["train_net.py", "demo.py"] + sorted(
    os.path.relpath(p, REPO)
    for pattern in ("tools/convert_*.py", "tools/deploy/*.py")
    for p in glob.glob(os.path.join(REPO, pattern))
)


def commands(code):
    """The block's commands: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.split("\n") if line.strip() and line[0] != "#"]


def quick_blocks():
    """pytest params of every quick block, named page:line; those that do more than print their
    options are marked slow."""
    params = []
    for page in PAGES:
        for info, code, line in blocks(read(page)):
            if info.split() == QUICK:
                help_only = all(c.endswith(" --help") for c in commands(code))
                marks = [] if help_only else [pytest.mark.slow]
                params.append(pytest.param(code, id=f"{page}:{line}", marks=marks))
    return params


@pytest.fixture
def clone(tmp_path, builtin_datasets_env):
    """(folder, environment) to run a reader's commands in: the repository's top level as links,
    except output/, a fresh folder, and datasets/, the test session's built-in data; `python`
    is this test's interpreter."""
    folder = tmp_path / "clone"
    folder.mkdir()
    for name in os.listdir(REPO):
        if name not in ("output", "datasets"):
            os.symlink(os.path.join(REPO, name), folder / name)
    (folder / "output").mkdir()
    os.symlink(builtin_datasets_env["DETECTRON2_DATASETS"], folder / "datasets")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**builtin_datasets_env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return folder, env


@pytest.mark.parametrize("code", quick_blocks())
def test_quick_block_runs(code, clone):
    folder, env = clone
    run = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 0, f"exit {run.returncode}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"


def test_every_entry_point_shows_its_help_in_a_quick_block():
    shown = {
        c.split()[1]
        for page in PAGES
        for info, code, _ in blocks(read(page))
        if info.split() == QUICK
        for c in commands(code)
        if c.startswith("python ") and c.endswith(" --help")
    }
    assert [p for p in ENTRY_POINTS if p not in shown] == []
