"""Peak memory of a command and every process it starts (Ray's raylet and workers, vLLM's engine).

    python bench/peak_memory.py -- make run

Samples the summed proportional set size (PSS: shared pages split among their users, so the
object store and vLLM's shared memory are not counted twice) of the process tree twice a second,
and prints the peak and the wall time when the command ends.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main() -> int:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(__doc__)
        return 2
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_pss(root))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    wall = time.perf_counter() - start
    print(f"[peak_memory] exit {proc.returncode}; wall {wall:.1f} s; peak PSS of the process tree "
          f"{peak / 2**30:.2f} GiB", file=sys.stderr)  # fmt: skip
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
