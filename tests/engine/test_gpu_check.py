"""tools/gpu_check.py on the CPU: its dry run writes a report with every section, the GPU ones
skipped with their reason, and a tiny benchmark of the CPU implementations; and the parts that
read what the GPU runs print (pytest's junit report, compute-sanitizer's summary, the training
children's losses) give the right verdicts. The GPU sections themselves run on a GPU machine
(issue 19)."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from repo_paths import REPO

TOOLS = os.path.join(REPO, "tools")
SECTIONS = ("tests", "sanitizer", "bench", "bandwidth", "train", "infer")


@pytest.fixture
def tool(monkeypatch):
    """tools/gpu_check*.py as modules (tools/ is a folder of scripts, not a package)."""
    monkeypatch.syspath_prepend(TOOLS)
    return lambda name: importlib.import_module(name)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(markdown, json) of one dry run, with an authors' op folder and a compute-sanitizer that
    do not exist."""
    out = tmp_path_factory.mktemp("gpu_check") / "report.md"
    cmd = [sys.executable, os.path.join(TOOLS, "gpu_check.py"), "--dry-run", "--out", str(out)]
    cmd += ["--authors-op", str(out.parent / "no-such-dir"), "--sanitizer", "", "--repeat", "1"]
    cmd += ["--dtypes", "float32", "bfloat16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_dry_run_reports_every_section_in_order(dry_run):
    text, data = dry_run
    assert list(data["sections"]) == list(SECTIONS)
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Environment", "## Summary"]
    for number, (heading, name) in enumerate(zip(headings[2:], SECTIONS), 1):
        assert heading.startswith(f"## {number}. ") and f"({name}):" in heading


def test_dry_run_skips_the_gpu_sections_with_their_reason(dry_run):
    _, data = dry_run
    sections = data["sections"]
    for name in ("tests", "sanitizer", "train", "infer"):
        assert sections[name]["status"] == "skipped"
        assert all(p["skipped_because"] == "dry run: no GPU" for p in sections[name]["planned"])
    tests = sections["tests"]["planned"]
    assert [p["label"] for p in tests] == ["triton", "cpp"]
    assert all("tests/layers/test_ms_deform_attn_cuda.py" in p["command"] for p in tests)
    assert [p["label"] for p in sections["sanitizer"]["planned"]] == [
        f"{backend} {tool}" for backend in ("triton", "cpp") for tool in ("memcheck", "racecheck")
    ]
    assert [p["label"] for p in sections["train"]["planned"]] == ["float32", "float16", "bfloat16"]
    env = data["environment"]
    assert env["compute-sanitizer"] == "not found"
    assert env["op: authors"].startswith("no MultiScaleDeformableAttention*.so under")


def test_dry_run_benchmarks_the_cpu_implementations(dry_run):
    text, data = dry_run
    bench = data["sections"]["bench"]
    assert bench["status"] == "ran"
    assert bench["data"]["skipped"]["triton"].startswith("dry run")
    assert bench["data"]["skipped"]["authors"].startswith("no MultiScaleDeformableAttention")
    rows = bench["data"]["rows"]
    impls = {r["impl"] for r in rows}
    assert "reference" in impls and impls <= {"cpp", "reference"}
    assert {(r["case"], r["dtype"], r["pass_"]) for r in rows} == {
        (case, dtype, pass_)
        for case in ("decoder b2", "encoder b1")
        for dtype in ("float32", "bfloat16")
        for pass_ in ("fwd", "fwd+bwd")
    }
    for r in rows:
        assert r["ms"] > 0 and r["speedup"] > 0 and r["bytes"] > 0 and r["failure"] is None
        if r["pass_"] == "fwd":
            assert r["error"] < (1e-5 if r["dtype"] == "float32" else 1e-2)
    assert data["sections"]["bandwidth"]["data"]["copy_gbps"] > 0
    assert "| case | dtype | pass |" in text


def test_sections_option(tool):
    gpu_check = tool("gpu_check")
    assert gpu_check.parse_args(["--sections", "bandwidth"]).sections == ["bandwidth", "bench"]
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--sections", "nonsense"])
    report = tool("gpu_check_report")
    section = report.Section("infer", selected=False)
    assert (section.status, section.note) == ("not selected", "not in --sections")


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0"
failures="1" skipped="2" tests="5"><testcase classname="tests.layers.m" name="test_a"/>
<testcase classname="tests.layers.m" name="test_b"><failure message="assert 1 == 2">x</failure>
</testcase></testsuite></testsuites>"""


def test_pytest_verdict(tool, tmp_path):
    report = tool("gpu_check_report")
    xml = tmp_path / "junit.xml"
    xml.write_text(JUNIT)
    ok, line, detail = report.pytest_record(str(xml), 1, "output", None)
    assert not ok and line.startswith("2 passed, 1 failed, 0 errors, 2 skipped")
    assert "tests.layers.m::test_b: assert 1 == 2" in detail
    assert report.pytest_record(str(tmp_path / "none.xml"), "timeout", "", None)[0] is False


def test_sanitizer_verdict(tool):
    report = tool("gpu_check_report")
    result = {"triton float32": {"error": 1e-7, "finite_grads": True}}
    clean = "========= ERROR SUMMARY: 0 errors\n"
    assert report.sanitizer_record(0, clean, result)[0]
    assert not report.sanitizer_record(9, "========= ERROR SUMMARY: 3 errors\n", result)[0]
    assert not report.sanitizer_record(0, "no summary printed", result)[0]
    assert not report.sanitizer_record(0, clean, None)[0]  # the workload did not finish
    race = "========= RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)\n"
    assert report.sanitizer_summary(race) == (0, 2)


def test_sanitizer_workload_on_the_cpu(tool):
    op = tool("gpu_check_op")
    layers, _ = op.load_layers(os.path.join(REPO, "projects", "DeformableDETR"))
    result = op.sanitize_workload(layers, ["reference"], ["float32"], device="cpu")
    assert result["reference float32"]["error"] < 1e-6
    assert result["reference float32"]["finite_grads"]


def test_training_losses_compared_to_float32(tool):
    report = tool("gpu_check_report")
    run = dict(trainer="T", seconds_per_iter=0.5, images_per_iter=2, peak_mib=100.0)
    results = {
        "float32": {**run, "losses": {"total_loss": 10.0, "loss_ce": 2.0}},
        "float16": {**run, "losses": {"total_loss": 10.05, "loss_ce": 2.001}},
        "bfloat16": {**run, "losses": {"total_loss": 10.5, "loss_ce": 2.0}},
    }
    section = report.Section("train", selected=True)
    report.train_section(section, results, rtol=1e-2)
    assert section.status == "failed"
    assert section.records["float16"][0] and not section.records["bfloat16"][0]
    assert "| total_loss | 10.00000 | 10.05000 | 5.0e-03 | 10.50000 | 5.0e-02 |" in section.lines
    skipped = {"float32": results["float32"], "float16": {"skipped": "the config has no key"}}
    section = report.Section("train", selected=True)
    report.train_section(section, skipped, rtol=1e-2)
    assert section.status == "passed" and "no key" in section.note


def test_bytes_model(tool):
    op = tool("gpu_check_op")
    inputs = op.make_inputs(2, 5, torch.float32, "cpu", levels=((3, 4), (1, 2)))
    value, _, _, loc, w, g = inputs  # (2, 14, 8, 32), (2, 5, 8, 2, 4, 2), (2, 5, 8, 2, 4)
    forward = (value.numel() + loc.numel() + w.numel() + g.numel()) * 4
    assert op.min_bytes(inputs, backward=False) == forward
    backward = forward + (value.numel() + loc.numel() + w.numel()) * 8 + g.numel() * 4
    assert op.min_bytes(inputs, backward=True) == backward


def test_benchmark_stops_at_its_deadline(tool):
    op, report = tool("gpu_check_op"), tool("gpu_check_report")
    layers, _ = op.load_layers(os.path.join(REPO, "projects", "DeformableDETR"))
    cpu = torch.device("cpu")
    impls, skipped = op.implementations(layers, cpu, None, "not given", dry_run=True)
    cases = op.bench_cases(dry_run=True, quick=False)
    rows, baseline = op.run_bench(layers, cpu, impls, ["float32"], cases, 1, True, deadline=0)
    assert len(rows) == 2 * len(cases)
    assert all(r["ms"] is None and r["failure"].startswith("not run") for r in rows)
    section = report.Section("bench", selected=True)
    report.bench_section(section, rows, baseline, skipped, {}, 1, cpu, "float32")
    assert section.status == "ran" and "0 failed, 4 not run" in section.note
