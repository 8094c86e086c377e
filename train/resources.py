"""The trainer's memory use, for a run's resources.json: resident set size now and its peak during the run."""

from __future__ import annotations

import os
import resource
import sys


def rss_now() -> int:
    """Bytes of physical memory this process holds now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def reset_peak() -> bool:
    """Start a new peak (Linux: writing 5 to /proc/self/clear_refs resets VmHWM), so a run's peak is its own and
    not that of what the process did before (a sweep's earlier runs, a test session). False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Bytes of the most physical memory this process has held since the last reset_peak (or its start).

    Linux: VmHWM of /proc/self/status. Not ru_maxrss: Linux carries that over from the parent across fork and
    exec, so a small `fer train` started by a large process would report the parent's peak. Elsewhere
    ru_maxrss (KiB, bytes on macOS), the whole process's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return max(int(line.split()[1]) * 1024, rss_now())
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
