#!/usr/bin/python3
"""What fresh memory costs on this machine: maps 1.75 GB (a pool1 build's
activation matrix) with huge pages, writes one byte per 4 KiB page, unmaps,
and does it again at once. On the project's VM the first touch took
3.2-4.2 s and the second 0.1-0.6 s (the guest reuses pages the host already
backs); on bare metal both take a fraction of a second.

  /usr/bin/python3 scripts/first_touch.py [MB]
"""
import mmap
import sys
import time

mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1756
size = mb << 20
for attempt in ("first touch", "again"):
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    t0 = time.perf_counter()
    for off in range(0, size, 4096):
        m[off] = 1
    print("%-11s %d MB: %.2f s" % (attempt, mb, time.perf_counter() - t0), flush=True)
    m.close()
