#!/usr/bin/env bash
# Runs warder's checks and tests from the repository root:
#   cargo fmt --check, cargo clippy -D warnings, then the whole test suite
#   (every integration scenario on SQLite and on PostgreSQL).
#
#   scripts/test.sh           everything
#   scripts/test.sh --quick   tests only (no fmt, no clippy)
#
# Services: PostgreSQL (WARDER_TEST_DATABASE_URL, default
# postgres://postgres@127.0.0.1:5432/test) and Redis (WARDER_TEST_REDIS_URL,
# default redis://127.0.0.1:6379). Under CI=true a missing service is a
# failure; otherwise it is a warning and the PostgreSQL variants are skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=false
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        -h | --help)
            sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "scripts/test.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

ci=false
if [[ "${CI:-}" == "true" ]]; then
    ci=true
fi

step() { printf '\n==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# host and port of a URL like scheme://[user[:pass]@]host[:port][/…]
url_authority() {
    local rest=${1#*://}
    rest=${rest%%/*}
    rest=${rest%%\?*}
    echo "${rest##*@}"
}
url_host() {
    local authority host
    authority=$(url_authority "$1")
    host=${authority%%:*}
    echo "${host:-127.0.0.1}"
}
url_port() {
    local authority
    authority=$(url_authority "$1")
    if [[ "$authority" == *:* && -n "${authority##*:}" ]]; then
        echo "${authority##*:}"
    else
        echo "$2"
    fi
}

# True when something accepts TCP connections on host:port.
tcp_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

postgres_up() {
    local host=$1 port=$2
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$host" -p "$port" -t 2
    else
        tcp_open "$host" "$port"
    fi
}

redis_up() {
    local host=$1 port=$2
    if command -v redis-cli >/dev/null 2>&1; then
        [[ "$(timeout 2 redis-cli -h "$host" -p "$port" ping 2>/dev/null)" == "PONG" ]]
    else
        tcp_open "$host" "$port"
    fi
}

# Services first: under CI a missing one fails before minutes of compiling.
step "checking services"

pg_skipped=false
pg_url=${WARDER_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
pg_host=$(url_host "$pg_url")
pg_port=$(url_port "$pg_url" 5432)
if postgres_up "$pg_host" "$pg_port"; then
    echo "PostgreSQL answers at $pg_host:$pg_port"
    export WARDER_TEST_DATABASE_URL="$pg_url"
elif $ci; then
    die "PostgreSQL does not answer at $pg_host:$pg_port; under CI=true the PostgreSQL variants must run (start it, or set WARDER_TEST_DATABASE_URL)"
else
    warn "PostgreSQL does not answer at $pg_host:$pg_port: skipping the PostgreSQL variants of the tests"
    export WARDER_TEST_SKIP_POSTGRES=1
    pg_skipped=true
fi

redis_url=${WARDER_TEST_REDIS_URL:-redis://127.0.0.1:6379}
redis_host=$(url_host "$redis_url")
redis_port=$(url_port "$redis_url" 6379)
if redis_up "$redis_host" "$redis_port"; then
    echo "Redis answers at $redis_host:$redis_port"
    export WARDER_TEST_REDIS_URL="$redis_url"
elif $ci; then
    die "Redis does not answer at $redis_host:$redis_port; under CI=true it must (start it, or set WARDER_TEST_REDIS_URL)"
else
    warn "Redis does not answer at $redis_host:$redis_port"
fi

if ! $quick; then
    step "cargo fmt --all -- --check"
    cargo fmt --all -- --check

    step "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
fi

if cargo nextest --version >/dev/null 2>&1; then
    # Under CI every test runs, so one failure does not hide another.
    nextest_args=()
    if $ci; then
        nextest_args+=(--no-fail-fast)
    fi
    step "cargo nextest run --workspace ${nextest_args[*]}"
    cargo nextest run --workspace "${nextest_args[@]}"
    # nextest does not run doctests.
    step "cargo test --workspace --doc"
    cargo test --workspace --doc
else
    step "cargo test --workspace"
    cargo test --workspace
fi

if $pg_skipped; then
    warn "the PostgreSQL variants were skipped (no PostgreSQL at $pg_host:$pg_port)"
fi
step "all checks passed"
