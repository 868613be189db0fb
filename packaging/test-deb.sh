#!/usr/bin/env bash
# Tests the Debian package built by build-deb.sh, as root, on a machine where systemd need not
# be running (CI's is a container): its name and contents, lintian (no errors), dpkg -i,
# the installed binary's --version and --help, the installed binary started the way the unit
# starts it (the unit's Environment= and LimitNOFILE=, then /etc/default/sigrelay, as an
# unprivileged user holding only CAP_NET_BIND_SERVICE, on port 443 of a loopback address, with
# TLS into a state directory, STUN/TURN on) answering /healthz, `systemd-analyze verify` of the
# unit, then dpkg -r and dpkg -P leaving nothing behind.
# Usage: packaging/test-deb.sh [PATH.deb]   (default: the one in target/debian/)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-deb: $*"; }
fail() {
    echo "test-deb: FAIL: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "must run as root (it installs and purges the package)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
deb=${1:-target/debian/sigrelay_${version}_${arch}.deb}
[ -f "$deb" ] || fail "$deb not found (run packaging/build-deb.sh first)"
if dpkg-query -W -f='${Status}' sigrelay 2>/dev/null | grep -q installed; then
    fail "sigrelay is already installed here; this test installs and purges it, remove it first"
fi

# --- The package as a file -------------------------------------------------------------------
say "inspecting $deb"
[ "$(dpkg-deb -f "$deb" Package)" = sigrelay ] || fail "package name"
[ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || fail "version is not $version"
[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "architecture is not $arch"
dpkg-deb --info "$deb" conffiles | grep -qx /etc/default/sigrelay || fail "/etc/default/sigrelay is not a conffile"
contents=$(dpkg-deb --contents "$deb" | awk '{print $6}')
unit=""
for path in ./usr/lib/systemd/system/sigrelay.service ./lib/systemd/system/sigrelay.service; do
    if grep -qx "$path" <<<"$contents"; then unit=${path#.}; fi
done
[ -n "$unit" ] || fail "no systemd unit in the package"
for path in ./usr/bin/sigrelay ./etc/default/sigrelay ./usr/share/man/man1/sigrelay.1.gz \
    ./usr/share/bash-completion/completions/sigrelay ./usr/share/zsh/vendor-completions/_sigrelay \
    ./usr/share/fish/vendor_completions.d/sigrelay.fish ./usr/share/doc/sigrelay/copyright; do
    grep -qx "$path" <<<"$contents" || fail "$path missing from the package"
done

if command -v lintian >/dev/null; then
    say "lintian"
    # Errors fail; warnings and info are printed for a person to read.
    lintian --fail-on error --info "$deb" || fail "lintian found errors"
elif [ -n "${CI:-}" ]; then
    fail "lintian is not installed (.ci/run installs it)"
else
    say "SKIP lintian: not installed (apt-get install lintian)"
fi

# --- Installed --------------------------------------------------------------------------------
server_pid=""
state=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    if [ -n "$state" ]; then rm -rf "$state"; fi
    dpkg -P sigrelay >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "dpkg -i"
dpkg -i "$deb" >/dev/null
/usr/bin/sigrelay --version | grep -q "^sigrelay $version" || fail "--version does not print $version"
/usr/bin/sigrelay --help | grep -q -- "--tls-dir" || fail "--help"
[ -x /usr/bin/sigrelay ] && [ -f "$unit" ] && [ -f /etc/default/sigrelay ] || fail "files not installed"

if command -v systemd-analyze >/dev/null; then
    say "systemd-analyze verify $unit"
    # Works without a running systemd; it also checks that ExecStart's binary exists and, when
    # man is installed, that Documentation=man:sigrelay(1) opens the installed page.
    man_check=--man=yes
    command -v man >/dev/null || man_check=--man=no
    systemd-analyze verify "$man_check" "$unit" || fail "systemd-analyze verify"
    # systemd's own score of the sandbox (0 = locked down, 10 = exposed), for a person to read.
    systemd-analyze security --offline=yes "$unit" 2>/dev/null | grep -i "overall exposure" || true
elif [ -n "${CI:-}" ]; then
    fail "systemd-analyze is not installed (package systemd)"
else
    say "SKIP systemd-analyze verify: not installed"
fi

# The unit, emulated: DynamicUser= needs a running systemd, so an existing unprivileged user
# (nobody) stands in, with the unit's capabilities, environment and open-file limit, and a
# state directory of its own as StateDirectory= would make. 443 on a random loopback address
# proves CAP_NET_BIND_SERVICE is enough to bind it.
say "starting the installed binary as the unit does"
state=$(mktemp -d)
chown nobody "$state"
chmod 0700 "$state"
ip="127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1)).1"
log="$state/log"
limit=$(sed -n 's/^LimitNOFILE=//p' "$unit")
if ! (ulimit -n "$limit") 2>/dev/null; then
    # A sandbox without CAP_SYS_RESOURCE cannot raise its hard limit; systemd would.
    say "cannot raise the open-file limit to $limit here; running with $(ulimit -Hn)"
    limit=$(ulimit -Hn)
fi
(
    ulimit -n "$limit"
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin bash -c '
        set -a
        '"$(sed -n 's/^Environment=//p' "$unit")"'
        . /etc/default/sigrelay
        SIGRELAY_TLS_DIR=$0 SIGRELAY_BIND=$1:443 SIGRELAY_TLS=true
        SIGRELAY_STUN=$1:0 SIGRELAY_TURN=true
        set +a
        exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs \
            --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
            --bounding-set=-all,+net_bind_service /usr/bin/sigrelay' "$state" "$ip"
) >"$log" 2>&1 &
server_pid=$!
ok=""
for _ in $(seq 1 100); do
    if health=$(curl -sfk --max-time 2 "https://$ip:443/healthz" 2>/dev/null); then
        ok=1
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ok" ] || {
    cat "$log" >&2
    fail "no answer from https://$ip:443/healthz"
}
say "healthz: $health"
[ "$(stat -c %U "$state/cert.pem" 2>/dev/null)" = nobody ] || fail "no certificate written to the state directory"
grep -q "STUN and TURN on udp $ip:" "$log" || fail "STUN/TURN did not start: $(cat "$log")"
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" = 0 ] || fail "exit status $status after SIGTERM: $(cat "$log")"

# --- Removed, then purged -------------------------------------------------------------------
say "dpkg -r, dpkg -P"
dpkg -r sigrelay >/dev/null
[ ! -e /usr/bin/sigrelay ] || fail "dpkg -r left /usr/bin/sigrelay"
[ ! -e "$unit" ] || fail "dpkg -r left $unit"
[ -f /etc/default/sigrelay ] || fail "dpkg -r removed the conffile (only purge should)"
dpkg -P sigrelay >/dev/null
leftovers=$(ls -d /etc/default/sigrelay /usr/share/doc/sigrelay /usr/share/man/man1/sigrelay.1.gz \
    /etc/systemd/system/*/sigrelay.service /var/lib/systemd/deb-systemd-helper-enabled/sigrelay.service \
    /var/lib/systemd/deb-systemd-helper-enabled/*/sigrelay.service 2>/dev/null || true)
[ -z "$leftovers" ] || fail "dpkg -P left: $leftovers"
dpkg-query -W -f='${Status}' sigrelay 2>/dev/null | grep -q installed && fail "still installed"
say "ok"
