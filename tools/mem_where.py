#!/usr/bin/env python3
"""Where a process's resident memory is: /proc/PID/smaps grouped by mapping.

    tools/mem_where.py PID [TOP]

Prints Rss (KiB) per group: the executable (text and data), each shared library, the
[heap] (main arena), anonymous mappings (glibc thread arenas: a mapped part and its
reserved rest make 64 MiB; thread stacks: above a 4 KiB guard page), [stack], and the
rest; then the TOP largest anonymous mappings, and the thread count by name.
"""

import collections
import os
import re
import sys


def mappings(pid):
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
            if m:
                if cur:
                    yield cur
                start, end = int(m.group(1), 16), int(m.group(2), 16)
                cur = {"size": (end - start) // 1024, "perms": m.group(3),
                       "path": m.group(4).strip(), "Rss": 0, "Anonymous": 0}
            elif cur is not None:
                k, _, v = line.partition(":")
                if k in ("Rss", "Anonymous", "Private_Dirty", "Shared_Clean", "Private_Clean"):
                    cur[k] = int(v.split()[0])
    if cur:
        yield cur


def main():
    pid = int(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    exe = os.path.realpath(f"/proc/{pid}/exe")
    groups = collections.Counter()
    anon = []
    maps = list(mappings(pid))
    for i, m in enumerate(maps):
        p = m["path"]
        prev = maps[i - 1] if i else None
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        if p == exe or p.endswith(os.path.basename(exe)) and "/" in p:
            g = "exe " + ("text" if "x" in m["perms"] else "data")
        elif p.startswith("/"):
            g = "lib " + os.path.basename(p)
        elif p == "[heap]":
            g = "[heap] (main arena)"
        elif p == "":
            if "r" not in m["perms"]:
                g = "anon reserved (no access)"
            elif (nxt and nxt["path"] == "" and "r" not in nxt["perms"]
                  and m["size"] + nxt["size"] == 64 * 1024):
                g = "anon thread arenas (glibc, 64 MiB each)"
            elif prev and prev["path"] == "" and "r" not in prev["perms"] and prev["size"] == 4:
                g = "anon thread stacks (after a guard page)"
            else:
                g = "anon other"
            m["group"] = g
            anon.append(m)
        else:
            g = p
        groups[g] += m["Rss"]
    total = sum(groups.values())
    print(f"pid {pid} ({exe}): Rss {total} KiB")
    for g, v in groups.most_common():
        if v:
            print(f"  {v:8d}  {g}")
    print(f"largest anonymous mappings (Rss KiB / size KiB):")
    for m in sorted(anon, key=lambda m: -m["Rss"])[:top]:
        print(f"  {m['Rss']:8d} / {m['size']:8d}  {m['group']}")
    names = collections.Counter()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                names[re.sub(r"[-_]?\d+$", "", f.read().strip())] += 1
        except OSError:
            pass
    print(f"threads {sum(names.values())}: " + ", ".join(f"{n} x{c}" for n, c in names.most_common()))


if __name__ == "__main__":
    main()
