"""The peak growth of this process's resident set while a function runs (Linux /proc), shared by
the benchmarks."""

__all__ = ["peak_rss_growth_mib"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_growth_mib(fn) -> float:
    """Runs fn; returns its peak resident set less the resident set before it, in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024
