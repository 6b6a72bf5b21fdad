#!/usr/bin/env bash
# The warder benchmark in one command: installs what it needs from the
# package registries, builds release binaries, then runs bench/bench.py.
#
#   bench/run.sh            full run (~15–25 min on 2 cores; installs oha,
#                           LiteLLM and Celery on first use)
#   bench/run.sh --quick    smoke mode for CI (~1–2 min after the build):
#                           installs nothing but nginx and wrk, exits
#                           non-zero if warder answers errors or throughput is 0
#
# Any other option goes to bench.py (bench/bench.py --help). Honours
# CARGO_TARGET_DIR (default: the repo's target/). Everything runs on
# loopback; every step is bounded in time; bench.py stops every process it
# started when it exits, however it exits.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
TOOLS="$BENCH/.tools"
VENV="$BENCH/.venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

QUICK=0
for arg in "$@"; do
  [[ $arg == --quick ]] && QUICK=1
done

log() { echo "[run.sh $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null && SUDO="sudo" || SUDO="NO"
fi

apt_install() {
  [[ $SUDO == NO ]] && die "need root (or sudo) to install: $*"
  log "installing from Debian: $*"
  if ! timeout 600 $SUDO env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
    timeout 300 $SUDO apt-get update -q >/dev/null
    timeout 600 $SUDO env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "$@" >/dev/null
  fi
}

# 1. System tools: nginx and wrk always; redis-server for the Celery reference.
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
if [[ $QUICK -eq 0 ]]; then
  command -v redis-server >/dev/null || need+=(redis-server)
fi
((${#need[@]} == 0)) || apt_install "${need[@]}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# 2. oha, the fixed-rate load generator: not in Debian, built once from
#    crates.io into bench/.tools (slow: ~10 min on 2 cores). Quick mode never
#    builds it and skips the fixed-rate runs when it is absent.
OHA=""
for candidate in "$TOOLS/bin/oha" "$(command -v oha || true)" "$HOME/.cargo/bin/oha"; do
  if [[ -n $candidate && -x $candidate ]]; then OHA="$candidate"; break; fi
done
if [[ -z $OHA && $QUICK -eq 0 ]]; then
  log "building oha from crates.io into bench/.tools (once)"
  # Its own target dir under bench/.tools: a build cut short by the timeout
  # resumes next time instead of starting over.
  if (cd "$BENCH" && timeout 2400 cargo install oha --locked --root "$TOOLS" \
        --target-dir "$TOOLS/build" --quiet); then
    OHA="$TOOLS/bin/oha"
    rm -rf "$TOOLS/build"
  else
    log "oha did not build: the fixed-rate runs will be skipped"
  fi
fi

# 3. Python peers (LiteLLM, Celery) in bench/.venv: full mode only, bounded.
if [[ $QUICK -eq 0 ]]; then
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  # A metadata check: importing litellm itself is slow and reaches out to the network.
  if ! "$VENV/bin/python" -c "import importlib.metadata as m, importlib.util as u; m.version('litellm'); assert u.find_spec('fastapi') and u.find_spec('uvicorn')" 2>/dev/null; then
    log "installing LiteLLM proxy from PyPI (large; up to 15 min)"
    timeout 900 "$VENV/bin/pip" install -q -r "$BENCH/requirements-litellm.txt" \
      || log "LiteLLM did not install: the report will say so"
  fi
  if ! "$VENV/bin/python" -c "import celery, redis" 2>/dev/null; then
    log "installing Celery + redis from PyPI"
    timeout 300 "$VENV/bin/pip" install -q -r "$BENCH/requirements-celery.txt" \
      || log "Celery did not install: the report will say so"
  fi
fi

# 4. Release builds: warder (the root workspace) and the fake upstream (its
#    own workspace), into the same target dir.
log "building warder (release) in $CARGO_TARGET_DIR"
(cd "$ROOT" && timeout 3000 cargo build --release -p warder)
log "building the fake upstream (release)"
(cd "$BENCH/upstream" && timeout 1200 cargo build --release --locked --bins)

# 5. Measure. bench.py ends every process it started on exit or signal.
if [[ $QUICK -eq 1 ]]; then BUDGET=900; else BUDGET=4500; fi
log "running bench.py"
exec timeout "$BUDGET" python3 "$BENCH/bench.py" \
  --warder "$CARGO_TARGET_DIR/release/warder" \
  --upstream "$CARGO_TARGET_DIR/release/bench-upstream" \
  --bare-proxy "$CARGO_TARGET_DIR/release/bare-proxy" \
  --nginx "$NGINX" \
  ${OHA:+--oha "$OHA"} \
  --venv "$VENV" \
  "$@"
