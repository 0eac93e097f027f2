"""ddetr_malloc: the scripts re-execute themselves once on mimalloc, keep their command line, leave
a user's own allocator and the opt-out alone, and name a bad DDETR_MALLOC; and the reason for all
of it, measured in page faults: a freed 64 MiB block comes back from mimalloc without faults, where
glibc's malloc maps it afresh (one fault per 4 KiB page), and still so after mimalloc's default
purge delay of 1 s, which the scripts raise."""

import json
import os
import subprocess
import sys

import ddetr_malloc
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE_DIR = os.path.join(REPO, "projects", "DeformableDETR")
BLOCK_MIB = 64  # over glibc's 32 MiB ceiling for blocks it keeps
PAGES = BLOCK_MIB * 2**20 // os.sysconf("SC_PAGE_SIZE")

# A script as the project's scripts start, reporting its allocator, its argv, its LD_PRELOAD and
# the page faults of filling a 64 MiB tensor again after freeing one of that size, after PAUSE_S
# seconds of other work (an inference's length on the CPU: mimalloc gives back what it kept
# unused past its purge delay as it goes on allocating).
SCRIPT = f"""
import sys
sys.path.insert(0, {PACKAGE_DIR!r})
import ddetr_malloc
if __name__ == "__main__":
    ddetr_malloc.reexec_with_mimalloc()
import json, os, resource, time
import torch

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

n = {BLOCK_MIB} * 2**20 // 4
x = torch.empty(n); x.fill_(1); del x
end = time.monotonic() + float(os.environ.get("PAUSE_S", "0"))
while time.monotonic() < end:
    torch.empty(2**20).fill_(0)
    time.sleep(0.01)
before = faults()
x = torch.empty(n); x.fill_(2)
refill = faults() - before
print(json.dumps({{"allocator": ddetr_malloc.allocator_in_use(), "argv": sys.argv[1:],
                   "preload": os.environ.get("LD_PRELOAD", ""), "refill_faults": refill,
                   "tbb": os.environ.get("TBB_ENABLE_SANITIZERS"),
                   "purge_delay": os.environ.get("MIMALLOC_PURGE_DELAY")}}))
"""

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and /proc are Linux's")


def clean_env(**extra):
    """The test process's environment without any allocator choice, DDETR_MALLOC=mimalloc (its
    default, "auto", leaves a machine with a GPU as it is), plus `extra`."""
    drop = ("LD_PRELOAD", ddetr_malloc.ENV, *ddetr_malloc.SETTINGS)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return dict(env, OMP_NUM_THREADS="1", **{ddetr_malloc.ENV: "mimalloc", **extra})


def run_script(tmp_path, env, *args):
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, "-u", str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done


def report(done):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def thp_always():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


def test_mimalloc_library_is_the_wheels_shared_object():
    path = ddetr_malloc.mimalloc_library()
    assert path is not None, "cmeel-mimalloc (requirements.txt) is not installed"
    assert os.path.basename(path).startswith("libmimalloc.so") and os.path.isfile(path)
    done = subprocess.run(
        [sys.executable, "-m", "ddetr_malloc"], capture_output=True, text=True, env=clean_env()
    )
    assert done.returncode == 0 and done.stdout.strip() == path
    done = subprocess.run(
        [sys.executable, "-m", "ddetr_malloc", "--env"],
        capture_output=True,
        text=True,
        env=clean_env(MIMALLOC_PURGE_DELAY="-1"),
    )
    assert done.returncode == 0 and done.stdout.split() == [
        "MIMALLOC_PURGE_DELAY=-1",  # the user's value kept
        "TBB_ENABLE_SANITIZERS=1",
        f"LD_PRELOAD={path}",
    ]
    done = subprocess.run([sys.executable, "-m", "ddetr_malloc", "--path"], capture_output=True)
    assert done.returncode != 0 and b"usage: python -m ddetr_malloc [--env]" in done.stderr


def test_script_reexecutes_on_mimalloc_with_its_arguments(tmp_path):
    args = ["--config-file", "a b.yaml", "KEY", "value with spaces", "--x=1"]
    got = report(run_script(tmp_path, clean_env(), *args))
    assert got["allocator"] == "mimalloc"
    assert got["argv"] == args
    assert got["preload"] == ddetr_malloc.mimalloc_library()
    assert got["tbb"] == "1"  # oneTBB loads hwloc without RTLD_DEEPBIND (OpenVINO's abort)
    assert got["purge_delay"] == "10000"
    # the freed block came back: far fewer faults than its pages (measured: 0 of 16384)
    assert got["refill_faults"] < PAGES / 16, got


def test_freed_memory_kept_past_mimallocs_default_purge_delay(tmp_path):
    """Freed 1.5 s of work before (longer than mimalloc's default delay of 1 s), the block comes
    back without faults under the scripts' delay; with mimalloc's default it was given back and
    faults in again (the control). Counted in 2 MiB pages, the fewest the kernel may fault it in
    (mimalloc asks for huge pages where the kernel gives them on request)."""
    huge_pages = BLOCK_MIB // 2
    kept = report(run_script(tmp_path, clean_env(PAUSE_S="1.5")))
    assert kept["purge_delay"] == "10000", kept
    assert kept["refill_faults"] < huge_pages / 4, kept  # measured: 0
    purged = report(run_script(tmp_path, clean_env(PAUSE_S="1.5", MIMALLOC_PURGE_DELAY="1000")))
    assert purged["purge_delay"] == "1000", purged  # the user's value stays
    assert purged["refill_faults"] >= huge_pages * 0.9, purged  # measured: 32 (2 MiB pages)


def test_opt_out_keeps_glibc_which_faults_on_every_page(tmp_path):
    got = report(run_script(tmp_path, clean_env(**{ddetr_malloc.ENV: "system"})))
    assert got["allocator"] == "system" and got["preload"] == "" and got["tbb"] is None
    if not thp_always():  # with 2 MiB pages everywhere, 512 times fewer faults
        # the control: glibc maps the 64 MiB afresh, every page faults (measured: 16385)
        assert got["refill_faults"] >= PAGES * 0.9, got


def test_users_allocator_left_alone(tmp_path):
    # any LD_PRELOAD naming an allocator is the user's choice; this one does not exist, so the
    # loader warns and the process keeps glibc's malloc, with LD_PRELOAD as the user set it
    preload = str(tmp_path / "libjemalloc.so.2")
    got = report(run_script(tmp_path, clean_env(LD_PRELOAD=preload)))
    assert got["allocator"] == "system" and got["preload"] == preload


def test_other_preloads_kept_after_mimalloc(tmp_path):
    other = str(tmp_path / "libother.so")  # not an allocator: mimalloc goes first, it stays
    got = report(run_script(tmp_path, clean_env(LD_PRELOAD=other, TBB_ENABLE_SANITIZERS="0")))
    assert got["allocator"] == "mimalloc" and got["tbb"] == "0"  # the user's value stays
    assert got["preload"] == f"{ddetr_malloc.mimalloc_library()}:{other}"


def test_bad_choice_named(tmp_path):
    done = run_script(tmp_path, clean_env(**{ddetr_malloc.ENV: "fast"}))
    assert done.returncode != 0
    assert "DDETR_MALLOC must be one of auto, mimalloc, system, got 'fast'" in done.stderr


def test_auto_leaves_gpu_machines_as_they_are(tmp_path, monkeypatch):
    device = tmp_path / "nvidia0"
    monkeypatch.setattr(ddetr_malloc, "GPU_DEVICES", (str(tmp_path / "nvidia[0-9]*"),))
    for choice, gpu, wanted in [
        ("auto", False, True),
        ("auto", True, False),
        ("mimalloc", True, True),
        ("system", False, False),
    ]:
        if gpu:
            device.touch()
        elif device.exists():
            device.unlink()
        monkeypatch.setenv(ddetr_malloc.ENV, choice)
        assert ddetr_malloc._wants_mimalloc() is wanted, (choice, gpu)


def test_missing_wheel_warns_and_goes_on(monkeypatch):
    monkeypatch.setattr(ddetr_malloc, "mimalloc_library", lambda: None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv(ddetr_malloc.ENV, "mimalloc")
    monkeypatch.setattr(sys, "argv", [os.path.abspath(__file__)])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, os.path.abspath(__file__)])
    with pytest.warns(UserWarning, match="cmeel-mimalloc is not installed"):
        ddetr_malloc.reexec_with_mimalloc()  # returns: no exec without the library


def test_system_env_takes_only_mimalloc_out(monkeypatch):
    library = "/x/site-packages/cmeel.prefix/lib/libmimalloc.so.3.4"
    monkeypatch.setenv("LD_PRELOAD", f"{library}:/opt/libother.so")
    env = ddetr_malloc.system_env()
    assert env["LD_PRELOAD"] == "/opt/libother.so" and env[ddetr_malloc.ENV] == "system"
    monkeypatch.setenv("LD_PRELOAD", library)
    assert "LD_PRELOAD" not in ddetr_malloc.system_env()


@pytest.mark.parametrize(
    "orig, argv, started",
    [
        (["python", "demo.py", "--x", "1"], ["demo.py", "--x", "1"], True),
        (["python", "-u", "-X", "dev", "demo.py"], ["demo.py"], True),
        (["python", "-m", "tools.demo", "--x"], ["demo.py", "--x"], True),
        # a test (or a user's program) runs demo.py in its own process with runpy: no exec, which
        # would start pytest again (the suite ran twice and stopped, in CI)
        (["python", "-m", "pytest", "tests", "-q"], ["demo.py", "--x"], False),
        (["python", "-m", "pytest", "tests"], ["demo.py", "tests"], False),
        (["python", "run.py", "--x"], ["demo.py", "--x"], False),
        (["python", "-c", "pass"], ["-c"], False),
    ],
)
def test_exec_only_when_the_command_line_runs_the_script(
    tmp_path, monkeypatch, orig, argv, started
):
    monkeypatch.chdir(tmp_path)
    for name in ("demo.py", "run.py"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(sys, "orig_argv", orig)
    monkeypatch.setattr(sys, "argv", argv)
    assert ddetr_malloc._started_as_this_script() is started


def test_script_run_by_another_program_in_its_process_does_not_exec(tmp_path):
    # runpy.run_path(SCRIPT, run_name="__main__") inside a -c program: the command line is the
    # program's, so the script goes on, on the program's malloc, with the argv it was given
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    program = (
        f"import runpy, sys; sys.argv = [{str(script)!r}, 'a']; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], env=clean_env(), capture_output=True, text=True
    )
    got = report(done)
    assert got["allocator"] == "system" and got["argv"] == ["a"] and got["preload"] == ""
