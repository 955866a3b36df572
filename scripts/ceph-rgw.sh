#!/usr/bin/env bash
# A throwaway single-node Ceph RADOS Gateway on 127.0.0.1: a real S3 server for the S3-facing tests
# (`make test-rgw`; docs/compatibility.md says what it showed).
#
#   scripts/ceph-rgw.sh up DIR     start it in DIR (which must not exist, or be empty)
#   scripts/ceph-rgw.sh down DIR   stop it and remove DIR (nothing to do when DIR does not exist;
#                                  an empty DIR, e.g. one whose `up` failed early, is just removed)
#
# `up` starts one monitor, one OSD on memstore (in memory; nothing but logs touch the disk) and
# radosgw, without systemd, cephx or a manager, on free loopback ports; creates an S3 user; waits
# until an S3 round trip (create a bucket, put, get, delete) works; and writes DIR/env:
#
#   export S3_TEST_ENDPOINT_URL=http://127.0.0.1:PORT
#   export S3_TEST_ACCESS_KEY_ID=...        export S3_TEST_SECRET_ACCESS_KEY=...
#   export S3_TEST_REGION=us-east-1         export S3_TEST_SSE_KMS_KEY_ID=testkey-1
#
# `. DIR/env` gives tests/conftest.py its server. SSE-KMS works over plain HTTP with radosgw's
# "testing" key backend and key id S3_TEST_SSE_KMS_KEY_ID. If `up` fails or is interrupted, it
# prints the logs' last lines, stops what it started and removes DIR.
#
# `down` stops the daemons by the PIDs recorded in DIR/pids, each first checked to still be a daemon
# running on DIR/ceph.conf (never by process name), SIGTERM then, after CEPH_RGW_STOP_TIMEOUT
# seconds (15), SIGKILL; it returns when they have exited, and removes DIR. It refuses, and leaves
# alone, a DIR that is neither made by `up` (DIR/ceph.conf and DIR/pids) nor empty.
#
# Needs Debian's ceph-mon, ceph-osd, radosgw and ceph-common (Ceph 16.2 on Debian 12). Run as root
# where they are missing, it installs them with apt-get (CEPH_RGW_NO_INSTALL=1: never); otherwise
# it says what to install. Environment: CEPH_RGW_DEBUG (radosgw's log level: 0; 1 logs each
# request), CEPH_RGW_START_TIMEOUT (seconds to wait for the first S3 round trip: 60).
set -euo pipefail
shopt -s extglob

PROG=${0##*/}
PACKAGES=(ceph-mon ceph-osd radosgw ceph-common)
BINARIES=(ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool)
ACCESS_KEY=rgw-test-access-key
SECRET_KEY=rgw-test-secret-key-0123456789abcdef
REGION=us-east-1
SSE_KEY_ID=testkey-1
SSE_KEY_B64=$(printf '%s' 'celery-s3-envelope-rgw-test-key!' | base64)  # 32 bytes: AES-256
RGW_DEBUG=${CEPH_RGW_DEBUG:-0}
START_TIMEOUT=${CEPH_RGW_START_TIMEOUT:-60}
STOP_TIMEOUT=${CEPH_RGW_STOP_TIMEOUT:-15}
RGW_POOLS=(.rgw.root default.rgw.log default.rgw.control default.rgw.meta
    default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec)

log() { echo "$PROG: $*" >&2; }
die() {
    log "$*"
    exit 1
}
usage() {
    echo "usage: $PROG up|down DIR" >&2
    exit 2
}
now_ms() { date +%s%3N; }

# --- installation --------------------------------------------------------------------------------

missing_binaries() {
    local binary missing=()
    for binary in "${BINARIES[@]}"; do
        command -v "$binary" >/dev/null 2>&1 || missing+=("$binary")
    done
    echo "${missing[*]}"
}

ensure_ceph() {
    local missing
    missing=$(missing_binaries)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -ne 0 ] || [ "${CEPH_RGW_NO_INSTALL:-0}" = 1 ] || ! command -v apt-get >/dev/null; then
        die "missing $missing. Install Debian's Ceph packages (Debian 12: Ceph 16.2), as root:
    apt-get update && apt-get install -y ${PACKAGES[*]}"
    fi
    log "missing $missing: installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2; then
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2 ||
            die "apt-get install ${PACKAGES[*]} failed"
    fi
    missing=$(missing_binaries)
    [ -z "$missing" ] || die "still missing after apt-get install: $missing"
}

# --- down ----------------------------------------------------------------------------------------

# Is PID alive and a daemon started by `up` on DIR's config? (A recycled PID is not.)
ours() {
    local cmdline
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ $cmdline == *" -c $2/ceph.conf "* ]]
}

# Is PID a dead daemon of ours that its parent (init, once `up` has exited) has not reaped yet?
unreaped() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat == "$1 ("@(ceph-mon|ceph-osd|radosgw)") Z "* ]]
}

stop_all() {  # DIR: stop the recorded daemons, radosgw first and the monitor last
    local dir=$1 name pid tenths
    local -a pids=()
    [ -f "$dir/pids" ] || return 0
    while read -r name pid; do
        [ -n "${pid:-}" ] && pids=("$pid" "${pids[@]}")
    done <"$dir/pids"
    for pid in "${pids[@]}"; do
        ours "$pid" "$dir" || continue
        kill -TERM "$pid" 2>/dev/null || true
        tenths=0
        while ours "$pid" "$dir" && [ "$tenths" -lt $((STOP_TIMEOUT * 10)) ]; do
            sleep 0.1
            tenths=$((tenths + 1))
        done
        if ours "$pid" "$dir"; then
            log "pid $pid still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while ours "$pid" "$dir"; do sleep 0.05; done
        fi
    done
    # Leave no trace in the process table either: give init up to 5 s to reap them.
    tenths=0
    for pid in "${pids[@]}"; do
        while unreaped "$pid" && [ "$tenths" -lt 50 ]; do
            sleep 0.1
            tenths=$((tenths + 1))
        done
    done
}

cmd_down() {
    local dir=$1
    [ -e "$dir" ] || return 0
    dir=$(cd "$dir" && pwd -P)
    if [ ! -f "$dir/ceph.conf" ] || [ ! -f "$dir/pids" ]; then
        # Empty: made for an `up` that failed before writing anything (e.g. Ceph missing).
        if [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ]; then
            rmdir -- "$dir"
            return 0
        fi
        die "$dir was not made by '$PROG up' (no ceph.conf and pids): not touching it"
    fi
    stop_all "$dir"
    rm -rf -- "$dir"
}

# --- up ------------------------------------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# An S3 round trip signed with AWS signature v2 from the standard library (radosgw accepts it):
# create a bucket, put an object, read it back, delete both. Exit status 0 when all of it worked.
s3_round_trip() {
    python3 - "$1" "$ACCESS_KEY" "$SECRET_KEY" <<'EOF'
import base64, hashlib, hmac, http.client, sys, uuid
from email.utils import formatdate

endpoint, access_key, secret_key = sys.argv[1:]
bucket = f"warm-up-{uuid.uuid4().hex[:12]}"


def request(method, path, body=b""):
    date = formatdate(usegmt=True)
    digest = hmac.new(secret_key.encode(), f"{method}\n\n\n{date}\n{path}".encode(), hashlib.sha1)
    auth = f"AWS {access_key}:{base64.b64encode(digest.digest()).decode()}"
    conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=10)
    try:
        conn.request(method, path, body, {"Date": date, "Authorization": auth})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status >= 300:
        sys.exit(f"{method} {path}: {response.status} {data[:200]!r}")
    return data


request("PUT", f"/{bucket}")
request("PUT", f"/{bucket}/probe", b"round trip")
if request("GET", f"/{bucket}/probe") != b"round trip":
    sys.exit("GET returned other bytes than were PUT")
request("DELETE", f"/{bucket}/probe")
request("DELETE", f"/{bucket}")
EOF
}

start_daemon() {  # NAME COMMAND...: run in the foreground mode, detached from us; record the PID
    local name=$1
    shift
    setsid "$@" -c "$DIR/ceph.conf" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo "$name $!" >>"$DIR/pids"
}

step() { echo "--- $(($(now_ms) - T0)) ms: $*" >>"$DIR/log/setup.out"; }

on_exit_up() {
    local status=$?
    trap - EXIT
    if [ -n "${MKFS_PID:-}" ]; then  # the OSD's mkfs, if still running: it writes into DIR
        if ours "$MKFS_PID" "$DIR"; then kill -KILL "$MKFS_PID" 2>/dev/null || true; fi
        wait "$MKFS_PID" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -n "${DIR:-}" ] && [ -d "$DIR" ]; then
        log "start-up failed (status $status); the logs' last lines:"
        local file
        for file in "$DIR"/log/*; do
            [ -s "$file" ] || continue
            echo "==> $file <==" >&2
            tail -n 15 "$file" >&2 || true
        done
        stop_all "$DIR"
        rm -rf -- "$DIR"
    fi
    exit "$status"
}

write_config() {  # MON_PORT RGW_PORT FSID
    cat >"$DIR/ceph.conf" <<EOF
# Written by scripts/ceph-rgw.sh: a throwaway single-node cluster on 127.0.0.1.
[global]
fsid = $3
mon host = v2:127.0.0.1:$1
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
# No cephx. radosgw's mon client mode defaults to "secure", which needs cephx.
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
log to stderr = false
err to stderr = true
keyring = $DIR/keyring
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
# One OSD, in memory.
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 0
mon data avail crit = 0
# memstore keeps the placement-group logs in memory too: keep them short (else ~1 GB by the end).
osd min pg log entries = 10
osd max pg log entries = 10
osd pg log dups tracked = 10
osd pg log trim min = 10

[mon]
# Commits every 50 ms rather than every second: start-up in about 2.5 s, not tens of seconds.
paxos propose interval = 0.05

[client.rgw.test]
debug rgw = $RGW_DEBUG
# Without tcp_nodelay every small response waits ~40 ms (Nagle and delayed ACKs).
rgw frontends = beast endpoint=127.0.0.1:$2 tcp_nodelay=1
rgw data = $DIR/rgw
rgw thread pool size = 64
# SSE-KMS over plain HTTP, keys from the config ("testing" backend): id=base64 AES-256 key.
rgw crypt require ssl = false
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = $SSE_KEY_ID=$SSE_KEY_B64
EOF
}

cmd_up() {
    DIR=$1
    if [ -e "$DIR" ] && { [ ! -d "$DIR" ] || [ -n "$(ls -A "$DIR")" ]; }; then
        die "$DIR exists and is not an empty directory"
    fi
    ensure_ceph
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    trap on_exit_up EXIT
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 143' TERM
    T0=$(now_ms)
    mkdir -p "$DIR"/{mon,osd/ceph-0,rgw,run,log}
    : >"$DIR/pids"
    local mon_port rgw_port fsid osd_uuid endpoint pool deadline
    mon_port=$(free_port)
    rgw_port=$(free_port)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    endpoint="http://127.0.0.1:$rgw_port"
    write_config "$mon_port" "$rgw_port" "$fsid"

    step "monitor"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" \
        >>"$DIR/log/setup.out" 2>&1
    ceph-mon --mkfs -i a --monmap "$DIR/monmap" -c "$DIR/ceph.conf" >>"$DIR/log/setup.out" 2>&1
    start_daemon mon ceph-mon -f -i a

    # The OSD's id and radosgw's pools in one CLI session, before the OSD boots, so that all the
    # placement groups peer at once when it does; the OSD's mkfs meanwhile.
    step "osd id, pools and osd mkfs"
    ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" -c "$DIR/ceph.conf" >>"$DIR/log/osd-mkfs.out" 2>&1 &
    MKFS_PID=$!
    {
        echo "osd new $osd_uuid 0"
        for pool in "${RGW_POOLS[@]}"; do
            echo "osd pool create $pool 8 8 replicated"
            echo "osd pool application enable $pool rgw"
        done
    } | timeout "$START_TIMEOUT" ceph -c "$DIR/ceph.conf" >>"$DIR/log/setup.out" 2>&1
    wait "$MKFS_PID"
    MKFS_PID=

    step "osd"
    start_daemon osd ceph-osd -f -i 0

    # While the OSD boots: radosgw-admin would hold its first operation on the osdmap that shows the
    # OSD down until its next objecter tick (every 5 s) asks for a newer one, so tick often.
    step "s3 user"
    timeout "$START_TIMEOUT" radosgw-admin -c "$DIR/ceph.conf" -n client.rgw.test \
        --objecter-tick-interval=0.05 user create --uid=s3-test --display-name="S3 tests" \
        --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >>"$DIR/log/setup.out" 2>&1

    step "radosgw"
    start_daemon rgw radosgw -f -n client.rgw.test
    deadline=$(($(now_ms) + START_TIMEOUT * 1000))
    until s3_round_trip "$endpoint" 2>>"$DIR/log/setup.out"; do
        [ "$(now_ms)" -lt "$deadline" ] || die "no S3 round trip at $endpoint within ${START_TIMEOUT}s"
        sleep 0.1
    done
    step "S3 round trip done"

    cat >"$DIR/env" <<EOF
export S3_TEST_ENDPOINT_URL=$endpoint
export S3_TEST_ACCESS_KEY_ID=$ACCESS_KEY
export S3_TEST_SECRET_ACCESS_KEY=$SECRET_KEY
export S3_TEST_REGION=$REGION
export S3_TEST_SSE_KMS_KEY_ID=$SSE_KEY_ID
EOF
    trap - EXIT HUP INT TERM
    log "Ceph $(radosgw --version | awk '{print $3}') radosgw at $endpoint, up in $(($(now_ms) - T0)) ms; environment in $DIR/env"
}

[ $# -eq 2 ] || usage
case $1 in
up) cmd_up "$2" ;;
down) cmd_down "$2" ;;
*) usage ;;
esac
