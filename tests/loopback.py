"""Loopback ports and process sessions for ``tests/raycluster.py`` (a helper, not a test file).

Ports: free loopback ports are chosen by binding them all at once (so ``n`` are distinct), and
Ray's worker port range below the kernel's ephemeral range, where nothing else picks ports.

Processes: each ``ray start --block`` runs in a new session; Ray's daemons and workers stay in
that session (workers change process group, not session), so the cluster stops exactly the
processes whose session id is one it created (``session_members``) -- never other people's Ray
processes, and never ``ray stop`` (which kills every Ray process on the machine).
"""

from __future__ import annotations

import os
import random
import signal
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def die_with_parent() -> None:
    """In the child: get SIGTERM if the test process dies (safety net if ``stop`` never runs)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback (all held open together while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_range(width: int = 64, tries: int = 50) -> tuple[int, int]:
    """A free ``[lo, hi]`` port range below the kernel's ephemeral range (for Ray workers)."""
    for _ in range(tries):
        lo = random.randrange(20000, 32000 - width)
        socks = []
        try:
            for port in range(lo, lo + width):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((LOOPBACK, port))
            return lo, lo + width - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free worker port range found")


def session_members(sid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in session ``sid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.getsid(int(name)) != sid:
                continue
            stat = Path(f"/proc/{name}/stat").read_text()
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            out.append(int(name))
    return out
