"""The report of gpu_check.py: one Section per check, and the markdown (and JSON) written from
them. A section is "not selected", "skipped" (with the reason), "passed" or "failed" (checks),
or "ran" (measurements)."""

import datetime
import json
import os
import re
import shlex
import xml.etree.ElementTree as ET

__all__ = [
    "Section",
    "bandwidth_section",
    "bench_section",
    "infer_section",
    "train_section",
    "write",
]

TITLES = {
    "tests": "CUDA tests of both backends",
    "sanitizer": "compute-sanitizer memcheck and racecheck",
    "bench": "Op benchmark",
    "bandwidth": "Bytes moved and fraction of the measured bandwidth",
    "train": "AMP training iterations of ddetr_r50",
    "infer": "Inference images/s of ddetr_r50",
}
TAIL_LINES = 60
# the sanitizer workload's forward against float64: a sanity bound (the tests hold the tolerances)
WORKLOAD_RTOL = 1e-2


class Section:
    def __init__(self, name, selected):
        self.name, self.title, self.selected = name, TITLES[name], selected
        self.planned = []  # (label, command, reason it is skipped or None)
        self.records = {}  # label -> (ok, line, detail)
        self.lines = []  # markdown of measurements
        self.data = {}
        self._status, self._note = None, None

    def plan(self, label, command, skipped_because):
        self.planned.append((label, command, skipped_because))

    def record(self, label, ok, line, detail=""):
        self.records[label] = (ok, line, detail)

    def skip(self, reason):
        self._status, self._note = "skipped", reason

    def finish(self, status, note):
        self._status, self._note = status, note

    @property
    def status(self):
        if not self.selected:
            return "not selected"
        if self._status:
            return self._status
        if any(not ok for ok, _, _ in self.records.values()):
            return "failed"
        return "passed" if self.records else "skipped"

    def _entries(self):
        """(label, record or None, command or None, skip reason): the planned runs in order,
        then what was recorded without a plan."""
        planned = {label for label, _, _ in self.planned}
        for label, command, why in self.planned:
            yield label, self.records.get(label), command, why or "not run"
        for label, record in self.records.items():
            if label not in planned:
                yield label, record, None, None

    @property
    def note(self):
        if not self.selected:
            return "not in --sections"
        if self._note:
            return self._note
        parts = [
            f"{label}: {record[1] if record else 'skipped: ' + why}"
            for label, record, _, why in self._entries()
        ]
        return "; ".join(parts) or "nothing to run"

    def markdown(self, number):
        out = [f"## {number}. {self.title} ({self.name}): {self.status}", ""]
        if self.status in ("not selected", "skipped") and self._note:
            out += [f"Skipped: {self._note}", ""]
        for label, record, command, why in self._entries():
            out.append(f"- **{label}**: {record[1] if record else 'skipped: ' + why}")
            if record and record[2].strip():
                tail = record[2].strip().splitlines()[-TAIL_LINES:]
                out += ["", "  ```", *("  " + t for t in tail), "  ```"]
            if command:
                out.append(f"  command: `{shlex.join(command)}`")
        return "\n".join(out + ([""] if out[-1] else []) + self.lines) + "\n"

    def as_json(self):
        return dict(
            status=self.status,
            note=self.note,
            data=self.data,
            planned=[
                dict(label=label, command=c, skipped_because=w) for label, c, w in self.planned
            ],
            records={k: dict(ok=ok, line=line) for k, (ok, line, _) in self.records.items()},
        )


def junit_counts(path):
    """{tests, passed, failures, errors, skipped, failed: ["name: message"]} of a junit xml."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = [
        f"{case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:200]}"
        for suite in suites
        for case in suite.iter("testcase")
        for bad in case
        if bad.tag in ("failure", "error")
    ]
    return counts


def pytest_record(xml, rc, out, _result):
    """(ok, line, detail) of one pytest run."""
    if rc == "timeout" or not os.path.isfile(xml):
        return False, f"exit {rc}, no junit report", out
    c = junit_counts(xml)
    line = (
        f"{c['passed']} passed, {c['failures']} failed, {c['errors']} errors, "
        f"{c['skipped']} skipped"
    )
    ok = rc == 0 and c["passed"] > 0  # all skipped: the GPU or the backend was not seen
    return ok, line, "\n".join(c["failed"]) + ("" if ok else "\n" + out)


def sanitizer_summary(text):
    """(errors, warnings) from compute-sanitizer's summary lines; errors None if none printed."""
    summary = re.search(r"ERROR SUMMARY: (\d+) errors?", text)
    race = re.search(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?, (\d+) warn", text)
    errors = int(summary[1]) if summary else int(race[1]) if race else None
    return errors, int(race[2]) if race else 0


def sanitizer_record(rc, out, result):
    """(ok, line, detail) of one compute-sanitizer run; result: the workload's
    {"impl dtype": {error, finite_grads}}, None if it did not finish."""
    errors, warnings = sanitizer_summary(out)
    sane = result is not None and all(
        r["error"] < WORKLOAD_RTOL and r["finite_grads"] for r in result.values()
    )
    ok = rc == 0 and errors == 0 and sane
    verdict = "clean" if ok else f"NOT clean (exit {rc}, {errors} errors)"
    worst = max((r["error"] for r in (result or {}).values()), default=None)
    line = (
        f"{verdict}, {warnings} hazard warnings; workload: {len(result or {})} runs, largest "
        f"forward error {_fmt(worst, '.1e')}, all within {WORKLOAD_RTOL} and gradients "
        f"finite: {sane}"
    )
    return ok, line, "" if ok else out


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _pivot(rows, cell, passes=("fwd", "fwd+bwd"), extra=None):
    """One table row per (case, dtype, pass), one column per implementation; extra: (header,
    function of the row's first record) of a last column."""
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    groups = {}
    for r in rows:
        groups.setdefault((r["case"], r["dtype"], r["pass_"]), {})[r["impl"]] = r
    body = [
        [*key, *(cell(group[i]) if i in group else "" for i in impls)]
        + ([extra[1](next(iter(group.values())))] if extra else [])
        for key, group in groups.items()
        if key[2] in passes
    ]
    return _table(["case", "dtype", "pass", *impls] + ([extra[0]] if extra else []), body)


def bench_section(section, rows, baseline, skipped, choices, repeat, device, half_locations):
    section.data.update(rows=rows, baseline=baseline, skipped=skipped, autotune=choices)
    if device.type == "cuda":
        timing = (
            "device time from CUDA events around each call, with a sleep kernel queued before "
            "it so that the host runs ahead and launch overhead is excluded"
        )
    else:
        timing = "host wall clock (dry run, CPU)"
    copies = ", ".join(
        f"{case} {n}"
        for case, n in dict((r["case"], r["copies"]) for r in rows if r["copies"]).items()
    )
    section.lines += [
        f"Median of {repeat} calls after a warm-up call (which also autotunes); {timing}. "
        f"Inputs rotate among copies, together at least 4x the L2 cache (copies: {copies}). "
        f"Cells: ms (speed-up = **{baseline}**'s time / this time). Half-precision rows: "
        f"half values, {half_locations} locations and weights.",
        "",
        *[f"- {name}: skipped: {why}" for name, why in skipped.items()],
        *[f"- {i}: {n}" for i, n in dict((r["impl"], r["note"]) for r in rows).items() if n],
        "",
    ]
    section.lines += _pivot(
        rows,
        lambda r: r["failure"] or f"{r['ms']:.4g} ({_fmt(r['speedup'], '.2f')}x)",
    )
    section.lines += ["", "Forward's |out - ref| / |ref| against the float64 reference:", ""]
    section.lines += _pivot(rows, lambda r: _fmt(r["error"], ".1e"), passes=("fwd",))
    if choices:
        section.lines += ["", "Triton autotuner's choices:", ""]
        section.lines += [f"- `{key}`: {config}" for key, config in sorted(choices.items())]
    not_run = [r for r in rows if (r["failure"] or "").startswith("not run")]
    failed = [r for r in rows if r["ms"] is None and r not in not_run]
    section.finish(
        "failed" if failed else "ran",
        f"{len(rows)} rows, {len(failed)} failed, {len(not_run)} not run; baseline {baseline}",
    )


def bandwidth_section(section, rows, copy_gbps):
    section.data.update(copy_gbps=copy_gbps)
    section.lines += [
        f"Measured bandwidth: **{copy_gbps:.0f} GB/s** (a device-to-device copy, bytes read plus "
        "bytes written, median of 10). Bytes model: the fewest bytes a call must move, every "
        "input read once and every output written once; the whole value is counted, though "
        "the decoder samples only part of it; forward+backward adds the backward's reads "
        "(value, locations, weights, grad_output) and writes (the three gradients). Cells: "
        "those bytes / the measured time, in GB/s, and as % of the copy's bandwidth (the "
        "bandwidth floor's time over the measured time). Real kernels move more (corners "
        "re-read, float32 atomics).",
        "",
    ]
    section.lines += _pivot(
        rows,
        lambda r: "-"
        if r["ms"] is None
        else f"{r['gbps']:.0f} ({100 * r['gbps'] / copy_gbps:.1f}%)",
        extra=("min MB", lambda r: f"{r['bytes'] / 1e6:.1f}"),
    )
    section.finish("ran", f"copy {copy_gbps:.0f} GB/s")


def _throughput(run):
    seconds = run["seconds_per_iter"]
    return _fmt(seconds, ".3f"), _fmt(seconds and run["images_per_iter"] / seconds, ".1f")


def train_section(section, results, rtol):
    """results: precision -> the child's dict (losses, seconds_per_iter, ...), or {"skipped":
    reason} or {"failed": reason, "output": its tail}."""
    section.data.update(results=results, rtol=rtol)
    ran = {p: r for p, r in results.items() if "losses" in r}
    halves = [p for p in ran if p != "float32"]
    base = ran.get("float32", {}).get("losses", {})
    rows, worst = [], dict.fromkeys(halves, 0.0)
    for key in sorted(base):
        row = [key, f"{base[key]:.5f}"]
        for precision in halves:
            value = ran[precision]["losses"].get(key)
            diff = 1.0 if value is None else abs(value - base[key]) / max(abs(base[key]), 1e-12)
            worst[precision] = max(worst[precision], diff)
            row += [_fmt(value, ".5f"), f"{diff:.1e}"]
        rows.append(row)
    header = ["loss (iteration 0)", "float32"] + [c for p in halves for c in (p, "rel. diff")]
    section.lines += [
        f"Iteration 0's losses, same weights and batch; tolerance {rtol} relative to float32. "
        "Throughput: median seconds per iteration after Detectron2's timer warm-up.",
        "",
        *_table(header, rows),
        "",
        *_table(
            ["precision", "trainer", "s/iter", "images/s", "peak MiB"],
            [(p, r["trainer"], *_throughput(r), f"{r['peak_mib']:.0f}") for p, r in ran.items()],
        ),
    ]
    for precision, r in results.items():
        if "skipped" in r:
            section.record(precision, True, f"skipped: {r['skipped']}")
        elif "failed" in r:
            section.record(precision, False, f"failed: {r['failed']}", r.get("output", ""))
        elif precision == "float32":
            section.record(precision, True, f"ran, {len(base)} losses")
        elif not base:
            section.record(precision, False, "no float32 losses to compare with")
        else:
            replayed = "replayed" if r.get("matching_replayed") else "NOT replayed"
            line = f"largest rel. diff {worst[precision]:.1e} (float32's matching {replayed})"
            section.record(precision, worst[precision] <= rtol, line)


def infer_section(section, result, failure):
    if not result:
        section.lines += ["```", *failure.splitlines()[-TAIL_LINES:], "```"]
        return section.finish("failed", "the inference child failed")
    section.data.update(result)
    section.lines += _table(
        ["size", "batch", "precision", "images/s", "peak MiB"],
        [
            (
                r["size"],
                r["batch"],
                r["precision"],
                f"{r['images_per_s']:.1f}",
                f"{r['peak_mib']:.0f}",
            )
            for r in result["rows"]
        ],
    )
    section.finish("ran", f"{len(result['rows'])} rows")


def write(path, command, seconds, environment, sections):
    """The markdown report at path, and the same as JSON at path with the extension .json."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# GPU check", "", f"`{command}`, {now}, {seconds:.0f} s.", "", "## Environment", ""]
    out += _table(["", ""], environment.items()) + ["", "## Summary", ""]
    out += _table(
        ["section", "status", "note"],
        [(s.name, s.status, s.note.replace("|", "/")) for s in sections],
    )
    out += [""] + [s.markdown(i) for i, s in enumerate(sections, 1)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out))
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(
            dict(
                command=command,
                seconds=seconds,
                environment=environment,
                sections={s.name: s.as_json() for s in sections},
            ),
            f,
            indent=1,
        )
