#!/usr/bin/env bash
# Checks the deployment files against a built relay binary:
#   1. deploy/formica-relay.service passes `systemd-analyze verify` without a single warning
#      about it, and its exposure score (`systemd-analyze security --offline`) stays low;
#   2. deploy/relay.public.toml is accepted by the relay: `relay serve` starts with it, prints
#      its URL under the configured public host, and exits 0 on SIGTERM; the same file with one
#      unknown key is refused with exit 2 (so the first check means something).
#
# Usage: deploy/check.sh path/to/relay        (e.g. target/debug/relay)
#
# Needs bash, coreutils and systemd-analyze (Debian: `apt-get install -y systemd`); works
# without systemd running as PID 1 (in a container, in CI). Bounded in time; cleans up.
set -euo pipefail

die() {
    echo "deploy/check.sh: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: deploy/check.sh path/to/relay"
[ -f "$1" ] && [ -x "$1" ] || die "$1 is not an executable file"
relay=$(realpath "$1")
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null ||
    die "systemd-analyze not found (Debian: apt-get install -y systemd)"

unit=deploy/formica-relay.service
config=deploy/relay.public.toml
# How long the relay may take to start, and to stop after SIGTERM (it drains for at most 10 s).
start_secs=30
stop_secs=30

tmp=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- 1. The unit ----------------------------------------------------------------------------
# `systemd-analyze verify` refuses a unit whose ExecStart binary does not exist, and the
# binary is not installed here: verify a copy (same file name, so the same unit name) whose
# ExecStart runs the relay under test through a symbolic link. Nothing else is changed.
echo "== systemd-analyze verify $unit ($(systemd-analyze --version | head -n 1))"
[ "$(grep -c '^ExecStart=/usr/local/bin/relay ' "$unit")" = 1 ] ||
    die "$unit: expected exactly one line starting 'ExecStart=/usr/local/bin/relay '"
mkdir "$tmp/bin" "$tmp/unit"
ln -s "$relay" "$tmp/bin/relay"
sed "s|^ExecStart=/usr/local/bin/relay |ExecStart=$tmp/bin/relay |" "$unit" \
    >"$tmp/unit/formica-relay.service"

# verify exits 0 even when it warns (an unknown or misspelled setting is "ignored"): any line
# naming the unit is a failure, as is a non-zero exit. Lines about other units (a broken unit
# elsewhere on the machine) are shown but not held against this one.
verify() {
    local out rc=0
    out=$(systemd-analyze verify "$1" 2>&1) || rc=$?
    printf '%s' "$out"
    return "$rc"
}
rc=0
out=$(verify "$tmp/unit/formica-relay.service") || rc=$?
if [ -n "$out" ]; then
    printf '%s\n' "$out" | sed 's/^/  systemd-analyze: /'
fi
if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -q -e 'formica-relay' -e "$tmp"; then
    die "$unit: systemd-analyze verify reports problems (exit $rc)"
fi
# The check above must be able to fail: the same unit with a misspelled setting is reported.
mkdir "$tmp/bad"
sed 's|^\[Service\]$|[Service]\nProtectSytem=strict|' "$tmp/unit/formica-relay.service" \
    >"$tmp/bad/formica-relay.service"
out=$(verify "$tmp/bad/formica-relay.service") || true
printf '%s\n' "$out" | grep -q "Unknown key 'ProtectSytem'" ||
    die "systemd-analyze verify did not report a misspelled setting; this check proves nothing"
echo "  ok: no warnings (and a misspelled setting is reported)"

echo "== systemd-analyze security --offline=yes $unit"
# Exposure is shown from 0.0 (locked down) to 10.0 (unprotected) and --threshold counts in
# tenths (default 100); the unit scores 1.2. A threshold of 2.0 catches a hardening setting lost
# in an edit.
if ! systemd-analyze security --offline=yes --threshold=20 --no-pager \
    "$tmp/unit/formica-relay.service" >"$tmp/security" 2>&1; then
    # The settings that count against the unit, and the total.
    grep -e '✗' -e 'exposure level' "$tmp/security" || cat "$tmp/security"
    die "$unit: exposure above 2.0 (or systemd-analyze security failed)"
fi
echo "  ok: $(grep -o 'Overall exposure level.*' "$tmp/security")"

# --- 2. The example configuration -------------------------------------------------------------
echo "== relay serve --config $config"
# The file's listen address and data directory are overridden, so that the check binds a free
# port and writes only into a temporary directory; everything else is the file's.
"$relay" serve --config "$config" --data-dir "$tmp/data" --listen 127.0.0.1:0 \
    >"$tmp/out" 2>"$tmp/err" &
pid=$!
deadline=$((SECONDS + start_secs))
until grep -q '^formica relay listening on http://' "$tmp/out"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        rc=0
        wait "$pid" || rc=$?
        pid=
        cat "$tmp/out" "$tmp/err" >&2
        die "$config: the relay exited with status $rc instead of starting"
    fi
    [ "$SECONDS" -lt "$deadline" ] || {
        cat "$tmp/out" "$tmp/err" >&2
        die "$config: the relay did not start within $start_secs s"
    }
    sleep 0.1
done
sed 's/^/  relay: /' "$tmp/out"
grep -q ' as relay\.example\.org ' "$tmp/out" ||
    die "$config: the relay does not serve as the configured public_host relay.example.org"

kill -TERM "$pid"
deadline=$((SECONDS + stop_secs))
while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || {
        cat "$tmp/err" >&2
        die "the relay did not exit within $stop_secs s of SIGTERM"
    }
    sleep 0.1
done
rc=0
wait "$pid" || rc=$?
pid=
[ "$rc" -eq 0 ] || {
    cat "$tmp/err" >&2
    die "the relay exited with status $rc after SIGTERM (expected 0)"
}
echo "  ok: started with it, exited 0 on SIGTERM"

# The relay refuses unknown keys; make sure it still does, so that the start above proves every
# key in the file is one the relay reads (a key appended at the end lands in [federation]).
{
    cat "$config"
    printf '\nno_such_key = 1\n'
} >"$tmp/unknown.toml"
rc=0
timeout "$start_secs" "$relay" serve --config "$tmp/unknown.toml" --data-dir "$tmp/data2" \
    --listen 127.0.0.1:0 >"$tmp/out2" 2>"$tmp/err2" || rc=$?
if [ "$rc" -ne 2 ] || ! grep -q 'no_such_key' "$tmp/err2"; then
    cat "$tmp/out2" "$tmp/err2" >&2
    die "a configuration with an unknown key was not refused with exit 2 (exit $rc)"
fi
echo "  ok: an unknown key is refused (exit 2)"

echo "deploy/check.sh: all checks passed"
