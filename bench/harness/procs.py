"""Processes the harness starts, CPU pinning, and what /proc says about them.

Every process is started in its own session (so its process group id is its
pid) and is ended by that id only, at exit, whatever way the harness exits.
CPU time comes from /proc/PID/stat (utime + stime, clock ticks, summed over a
process tree); peak RSS from /proc/PID/status (VmHWM).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Procs:
    """Starts processes pinned to a core and stops them all at exit."""

    def __init__(self, pin: bool):
        self.pin = pin and shutil.which("taskset") is not None
        self.started: list[tuple[str, subprocess.Popen]] = []
        atexit.register(self.stop_all)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        # SystemExit unwinds through finally blocks and atexit.
        raise SystemExit(128 + signum)

    def argv(self, argv: list[str], core: int | None) -> list[str]:
        """`argv` pinned to `core` (taskset execs, so the pid is the command's)."""
        if self.pin and core is not None:
            return ["taskset", "-c", str(core), *argv]
        return list(argv)

    def start(self, name, argv, core=None, env=None, stdout=None, stderr=None, cwd=None):
        p = subprocess.Popen(
            self.argv(argv, core),
            env=env,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
        self.started.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)

    def stop_all(self):
        while self.started:
            _, p = self.started.pop()
            try:
                self.stop(p)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system (kernel) CPU seconds used so far by `pids` (all their threads)."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by `pids` (all their threads)."""
    return sum(cpu_split(pids))


def status_kib(pids: list[int], field: str) -> int:
    """Sum of a `kB` field of /proc/PID/status (VmHWM, VmRSS) over `pids`."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def core_busy_seconds(cores: list[int]) -> dict[int, float]:
    """Busy (non-idle, non-iowait) seconds of each core since boot, from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if not parts[0].startswith("cpu") or parts[0] == "cpu":
                continue
            core = int(parts[0][3:])
            if core in cores:
                ticks = [int(x) for x in parts[1:]]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                out[core] = (sum(ticks[:8]) - idle) / CLK_TCK
    return out


def wait_until(check, timeout: float, interval: float = 0.01, proc=None) -> bool:
    """Polls `check()` until it is true, `timeout` seconds pass, or `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(interval)
    return False
