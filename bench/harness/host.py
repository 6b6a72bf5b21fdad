"""How quickly this machine hands work from one core to the other.

A request through a proxy crosses cores four times here (load generator →
proxy → upstream → proxy → load generator, the proxy alone on its core). At
a fixed rate below saturation the receiving core is usually idle, and how
long an idle core takes to wake is a property of the host (on a VM, of its
hypervisor), not of the proxy. This measures it, so that the report can say
how much of the added latency any proxy pays before it does any work.

Two processes, pinned, bounce one byte over a socketpair; the pinger sleeps
between pings so the echoing core goes idle each time. The same run with
both on one core gives the measuring overhead (Python, two syscalls).
"""

import json
import socket
import subprocess
import sys

ECHO = """
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
while True:
    b = s.recv(1)
    if not b:
        break
    s.send(b)
"""

PING = """
import json, socket, sys, time
s = socket.socket(fileno=int(sys.argv[1]))
n, gap = int(sys.argv[2]), float(sys.argv[3])
lat = []
for _ in range(n):
    t = time.perf_counter_ns()
    s.send(b"x")
    s.recv(1)
    lat.append(time.perf_counter_ns() - t)
    time.sleep(gap)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1e3
print(json.dumps({"p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999)}))
"""


def _round_trip(procs, echo_core, ping_core, pings, gap_s):
    a, b = socket.socketpair()
    echo = subprocess.Popen(procs.argv([sys.executable, "-c", ECHO, str(b.fileno())], echo_core),
                            pass_fds=[b.fileno()])
    try:
        r = subprocess.run(
            procs.argv([sys.executable, "-c", PING, str(a.fileno()), str(pings), str(gap_s)],
                       ping_core),
            pass_fds=[a.fileno()], capture_output=True, text=True,
            timeout=30 + pings * (gap_s + 0.01))
    finally:
        a.close()
        b.close()
        try:
            echo.wait(5)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait(5)
    if r.returncode != 0:
        raise OSError(f"the ping process failed: {r.stderr.strip()[:200]}")
    return json.loads(r.stdout)


def wake_latency(procs, sut_core, load_core, pings=2000, gap_s=0.0005):
    """Round-trip percentiles of a one-byte ping to an idle core (`cross`) and
    within one core (`same`), in µs."""
    return {
        "pings": pings,
        "gap_us": gap_s * 1e6,
        "cross": _round_trip(procs, sut_core, load_core, pings, gap_s),
        "same": _round_trip(procs, load_core, load_core, pings, gap_s),
    }
