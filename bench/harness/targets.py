"""The systems the benchmark starts: the fake upstream, nginx, warder, LiteLLM.

Each `start_*` returns a `Service` (or raises `Unavailable` with the reason)
already checked end to end: a request through it reaches the upstream and
comes back as expected. Services are pinned: the upstream to the load core,
everything under test to the SUT core.
"""

import json
import os
import secrets
import string
import subprocess
import time

from .loadgen import http_call
from .procs import descendants, free_port, status_kib, wait_until

# The one request every scenario sends: an OpenAI chat completion request.
REQUEST_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
     "max_tokens": 16},
    separators=(",", ":"),
)
JSON = {"Content-Type": "application/json"}


class Unavailable(RuntimeError):
    """This target cannot run here; the message says why (it goes in the report)."""


class Service:
    """A started process and how to measure it."""

    def __init__(self, name, proc, tree=False):
        self.name, self.proc, self.tree = name, proc, tree
        self.startup_ms = None
        self.idle_rss_kib = None

    def pids(self):
        if self.proc.poll() is not None:
            return []
        return descendants(self.proc.pid) if self.tree else [self.proc.pid]

    def alive(self):
        return self.proc.poll() is None

    def note_idle(self):
        self.idle_rss_kib = status_kib(self.pids(), "VmRSS")


class Target:
    """One load scenario: where requests go, with what, and who serves them."""

    def __init__(self, name, label, url, auth, service, body=REQUEST_BODY):
        self.name, self.label, self.url, self.auth = name, label, url, auth
        self.service, self.body = service, body


def _tail(path, n=300):
    """The end of a log file, for a one-line reason in the report."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip().replace("\n", " | ")
    except OSError:
        return "(no log)"


def _log_file(tmp, name):
    return open(os.path.join(tmp, f"{name}.log"), "ab")


def start_upstream(procs, binary, core, tmp):
    out_path = os.path.join(tmp, "upstream.out")
    with open(out_path, "wb") as out:
        p = procs.start("upstream", [binary, "127.0.0.1:0"], core=core, stdout=out,
                        stderr=_log_file(tmp, "upstream"))
    addr = None

    def bound():
        nonlocal addr
        with open(out_path) as f:
            for line in f:
                if line.startswith("listening on "):
                    addr = line.split()[-1]
                    return True
        return False

    if not wait_until(bound, 10, proc=p):
        raise Unavailable("the fake upstream did not start")
    svc = Service("upstream", p)
    svc.url = f"http://{addr}/v1/chat/completions"
    svc.base = f"http://{addr}"
    status, _, body = http_call("POST", svc.url, REQUEST_BODY, JSON)
    if status != 200:
        raise Unavailable(f"the fake upstream answered {status}")
    svc.answer = body
    return svc


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;
    upstream model {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(procs, binary, core, tmp, upstream, access_log=True):
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(
            tmp=tmp, port=port, upstream=upstream.base.removeprefix("http://"),
            user="user root;" if os.geteuid() == 0 else "",
            access_log=f"{tmp}/nginx-access.log" if access_log else "off"))
    started = time.monotonic()
    p = procs.start("nginx", [binary, "-p", tmp, "-c", conf, "-e", f"{tmp}/nginx-error.log"],
                    core=core, stderr=_log_file(tmp, "nginx"))
    svc = Service("nginx", p, tree=True)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    if not wait_until(lambda: http_call("POST", url, REQUEST_BODY, JSON, timeout=1)[0] == 200, 15,
                      proc=p):
        raise Unavailable(f"nginx did not answer: {_tail(f'{tmp}/nginx-error.log')}")
    svc.startup_ms = (time.monotonic() - started) * 1000
    svc.url = url
    return svc


FLOOR_LABEL = "bare tokio proxy (stack floor: no auth, limits, metrics or log)"


def start_bare_proxy(procs, binary, core, tmp, upstream):
    """bench-upstream's `bare-proxy`: the stack warder's sync predicts run on
    (tokio, HTTP/1.1 read and written by hand on both sides: ARCHITECTURE.md,
    decisions (l) and (m)), and nothing of warder's own on top: what any
    gateway built this way pays."""
    out_path = os.path.join(tmp, "bare-proxy.out")
    port = free_port()
    with open(out_path, "wb") as out:
        p = procs.start("bare-proxy", [binary, f"127.0.0.1:{port}", upstream.url], core=core,
                        stdout=out, stderr=_log_file(tmp, "bare-proxy"))
    svc = Service("floor", p)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    started = time.monotonic()
    if not wait_until(lambda: http_call("POST", url, REQUEST_BODY, JSON, timeout=1)[0] == 200, 10,
                      proc=p):
        raise Unavailable(f"the bare proxy did not answer: {_tail(out_path)}")
    svc.startup_ms = (time.monotonic() - started) * 1000
    svc.url = url
    return svc


def _alnum(n, alphabet=string.ascii_lowercase + string.digits):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def new_admin_key():
    """A key of the shape warder accepts: wdr_<8 lowercase alnum>_<32 alnum>."""
    return f"wdr_{_alnum(8)}_{_alnum(40, string.ascii_letters + string.digits)}"


def start_warder(procs, binary, core, tmp, name="warder", database_url=None):
    """`warder serve` on free ports with a temp data dir and JSON logs to a file
    (the per-request log line stays on: it is part of the budget)."""
    port, ops = free_port(), free_port()
    data = os.path.join(tmp, f"{name}-data")
    admin_key = new_admin_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDER_")}
    env.update(WARDER_BOOTSTRAP_ADMIN_KEY=admin_key, WARDER_LOG_FORMAT="json",
               WARDER_LOG_LEVEL="info")
    if database_url:
        env["WARDER_DATABASE_URL"] = database_url
    log_path = os.path.join(tmp, f"{name}.log")
    started = time.monotonic()
    # O_APPEND: the harness may truncate the log between runs to save disk.
    p = procs.start(name, [binary, "serve", "--listen", f"127.0.0.1:{port}",
                           "--ops-listen", f"127.0.0.1:{ops}", "--data-dir", data],
                    core=core, env=env, stdout=open(log_path, "ab"),
                    stderr=_log_file(tmp, f"{name}-stderr"))
    svc = Service(name, p)
    svc.log_path = log_path
    if not wait_until(lambda: http_call("GET", f"http://127.0.0.1:{ops}/readyz",
                                        timeout=1)[0] == 200, 30, interval=0.002, proc=p):
        raise Unavailable(f"{name} did not become ready: {_tail(log_path)} "
                          f"{_tail(os.path.join(tmp, name + '-stderr.log'))}")
    svc.startup_ms = (time.monotonic() - started) * 1000
    svc.base = f"http://127.0.0.1:{port}"
    svc.ops = f"http://127.0.0.1:{ops}"
    svc.admin_key = admin_key
    return svc


def _admin(svc, method, path, body, expect=(200, 201)):
    status, _, raw = http_call(method, svc.base + path, body,
                               {"Authorization": f"Api-Key {svc.admin_key}", **JSON})
    if status not in expect:
        raise Unavailable(f"warder admin {method} {path} answered {status}: {raw[:300]!r}")
    return json.loads(raw)


def configure_warder(svc, upstream):
    """Models `bench` (envelope) and `bench-raw`, a user with a key, a policy
    whose rate limit is active but never refuses, and grants."""
    for model, mode in (("bench", "envelope"), ("bench-raw", "raw")):
        _admin(svc, "POST", "/admin/models", {"name": model})
        _admin(svc, "POST", f"/admin/models/{model}/versions",
               {"upstream_url": upstream.url, "response": mode})
    policy = _admin(svc, "POST", "/admin/policies",
                    {"name": "bench", "rate_limit_per_second": 1e6, "burst": 1_000_000})
    user = _admin(svc, "POST", "/admin/users", {"name": "bench"})
    key = _admin(svc, "POST", f"/admin/users/{user['id']}/keys", {"name": "bench"})
    for model in ("bench", "bench-raw"):
        _admin(svc, "POST", "/admin/grants",
               {"user_id": user["id"], "model": model, "policy_id": policy["id"]})
    svc.user_key = key["key"]
    svc.auth = f"Api-Key {key['key']}"


def check_warder(svc, upstream, warm=50):
    """Warms the key (auth cache) and checks both answers byte for byte."""
    expected = json.loads(upstream.answer)
    for _ in range(warm):
        for model in ("bench", "bench-raw"):
            status, headers, body = http_call(
                "POST", f"{svc.base}/models/{model}/predict", REQUEST_BODY,
                {"Authorization": svc.auth, **JSON})
            if status != 200:
                raise Unavailable(f"warder predict on {model} answered {status}: {body[:300]!r}")
    lower = {k.lower() for k in headers}
    if "ratelimit-limit" not in lower:
        raise Unavailable("warder answered without RateLimit-* headers: rate limiting is not active")
    if body != upstream.answer:
        raise Unavailable("warder raw mode did not pass the upstream's bytes through")
    status, _, body = http_call("POST", f"{svc.base}/models/bench/predict", REQUEST_BODY,
                                {"Authorization": svc.auth, **JSON})
    env = json.loads(body)
    if env.get("output") != expected or "request_id" not in env:
        raise Unavailable(f"warder envelope is not as expected: {body[:300]!r}")


def log_lines(svc):
    """Lines in the warder log so far; truncates it (O_APPEND keeps writes sane).
    Its WARN and ERROR lines are kept in `svc.warnings` first."""
    try:
        n = 0
        with open(svc.log_path, "rb") as f:
            for line in f:
                n += 1
                _keep_warning(svc, line)
        os.truncate(svc.log_path, 0)
        return n
    except OSError:
        return 0


def log_warnings(svc):
    """`svc`'s WARN and ERROR lines, those of its log not yet read included:
    {message: count}."""
    try:
        with open(svc.log_path, "rb") as f:
            for line in f:
                _keep_warning(svc, line)
        os.truncate(svc.log_path, 0)
    except OSError:
        pass
    return dict(getattr(svc, "warnings", {}))


def _keep_warning(svc, line):
    # Cheap test first: nearly every line is an info line.
    if b'"level":"WARN"' not in line and b'"level":"ERROR"' not in line:
        return
    try:
        d = json.loads(line)
        msg = d.get("message", "?")
        if d.get("error"):
            msg += f": {d['error']}"
    except ValueError:
        msg = line[:200].decode("utf-8", "replace")
    svc.warnings = getattr(svc, "warnings", {})
    svc.warnings[msg] = svc.warnings.get(msg, 0) + 1


LITELLM_CONF = """\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: {api_base}
      api_key: sk-bench-upstream
general_settings:
  master_key: {master_key}
litellm_settings:
  telemetry: false
  drop_params: true
"""


def start_litellm(procs, venv, core, tmp, upstream, timeout=240):
    exe = os.path.join(venv, "bin", "litellm")
    if not os.path.exists(exe):
        raise Unavailable("LiteLLM is not installed in bench/.venv "
                          "(bench/run.sh installs it in full mode; quick mode skips the install)")
    port = free_port()
    master = "sk-bench-" + _alnum(24)
    conf = os.path.join(tmp, "litellm.yaml")
    with open(conf, "w") as f:
        f.write(LITELLM_CONF.format(api_base=upstream.base + "/v1", master_key=master))
    env = dict(os.environ)
    # No network here: use the cost map shipped in the package, send no telemetry.
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
               LITELLM_TELEMETRY="False", NO_PROXY="*", no_proxy="*")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "DATABASE_URL"):
        env.pop(k, None)
    log = os.path.join(tmp, "litellm.log")
    started = time.monotonic()
    p = procs.start("litellm", [exe, "--config", conf, "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"],
                    core=core, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    svc = Service("litellm", p, tree=True)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = f"Bearer {master}"

    def ready():
        return http_call("POST", url, REQUEST_BODY, {"Authorization": auth, **JSON},
                         timeout=5)[0] == 200

    if not wait_until(ready, timeout, interval=0.5, proc=p):
        if p.poll() is not None:
            raise Unavailable(f"LiteLLM exited with {p.returncode} at start-up: {_tail(log)}")
        raise Unavailable(f"LiteLLM did not answer within {timeout} s: {_tail(log)}")
    svc.startup_ms = (time.monotonic() - started) * 1000
    svc.url, svc.auth, svc.log_path = url, auth, log
    return svc
