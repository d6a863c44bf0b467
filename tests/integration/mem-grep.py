#!/usr/bin/env python3
"""Is a string in a live process's memory? usage: mem-grep.py PID STRING
Reads every readable, non-file-backed mapping of PID under 1 GiB (a
sanitizer's shadow memory is skipped) through /proc/PID/mem, as root.
Exit 0 when found, 1 when not, 2 on error."""
import re, sys

pid, needle = sys.argv[1], sys.argv[2].encode()
found = False
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
    for line in maps:
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)", line)
        if not m:
            continue
        lo, hi, perms, inode, path = int(m[1], 16), int(m[2], 16), m[3], m[4], m[5]
        if perms[0] != "r" or hi - lo > (1 << 30) or (inode != "0" and path.startswith("/")):
            continue
        try:
            mem.seek(lo)
            data = mem.read(hi - lo)
        except (OSError, ValueError, OverflowError):
            continue
        if needle in data:
            found = True
            break
sys.exit(0 if found else 1)
