#!/bin/sh
# Install tinyscada: the binary, the systemd units and a sample
# configuration.
#
#   deploy/install.sh [-b BINARY]
#
# BINARY is a built tinyscada (default: build one with `go build` into a
# temporary directory). Where things go is set by the environment, as with
# `make install`:
#
#   DESTDIR     staging root prepended to every path below (default: empty)
#   PREFIX      /usr/local
#   BINDIR      $PREFIX/bin                   the binary
#   SYSCONFDIR  /etc                          tinyscada/tinyscada.toml, kept if present
#   UNITDIR     $PREFIX/lib/systemd/system    the units (systemd looks there)
#   DOCDIR      $PREFIX/share/doc/tinyscada   the docs the units point to
#   SYSUSERSDIR $PREFIX/lib/sysusers.d        the tinyscada system user
#
# The units name the installed paths without DESTDIR. With an empty DESTDIR
# and root, the script ends with `systemctl daemon-reload`; then
# `systemctl enable --now tinyscada.target` starts the stack.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    -b) bin="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see -h)" >&2; exit 2 ;;
  esac
done

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BINDIR=${BINDIR:-$PREFIX/bin}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/tinyscada}
SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d}
for v in PREFIX BINDIR SYSCONFDIR UNITDIR DOCDIR SYSUSERSDIR; do
  eval "p=\$$v"
  case "$p" in
    /*) ;;
    *) echo "install.sh: $v=$p is not an absolute path" >&2; exit 2 ;;
  esac
done

if [ -z "$bin" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "building tinyscada"
  (cd "$top" && CGO_ENABLED=0 go build -trimpath -o "$tmp/tinyscada" ./cmd/tinyscada)
  bin="$tmp/tinyscada"
fi

install -d -m 0755 "$DESTDIR$BINDIR" "$DESTDIR$UNITDIR" "$DESTDIR$DOCDIR" "$DESTDIR$SYSCONFDIR/tinyscada" "$DESTDIR$SYSUSERSDIR"
install -m 0755 "$bin" "$DESTDIR$BINDIR/tinyscada"
install -m 0644 "$here/sysusers.d/tinyscada.conf" "$DESTDIR$SYSUSERSDIR/tinyscada.conf"

for u in "$here"/units/*.service "$here"/units/*.target; do
  sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" "$u" \
    > "$DESTDIR$UNITDIR/$(basename "$u").tmp"
  chmod 0644 "$DESTDIR$UNITDIR/$(basename "$u").tmp"
  mv "$DESTDIR$UNITDIR/$(basename "$u").tmp" "$DESTDIR$UNITDIR/$(basename "$u")"
done

for d in operations.md health.md topics.md configuration.md; do
  if [ -f "$top/docs/$d" ]; then install -m 0644 "$top/docs/$d" "$DESTDIR$DOCDIR/$d"; fi
done

# The sample configuration, with the state in the units' StateDirectory=.
# An existing configuration is never overwritten; the sample goes beside it.
conf="$DESTDIR$SYSCONFDIR/tinyscada/tinyscada.toml"
target="$conf"
[ -e "$conf" ] && target="$conf.sample"
sed -e 's|^state_dir = .*|state_dir = "/var/lib/tinyscada"|' "$here/tinyscada.toml" > "$target.tmp"
chmod 0644 "$target.tmp"
mv "$target.tmp" "$target"
echo "installed: $DESTDIR$BINDIR/tinyscada, units in $DESTDIR$UNITDIR, configuration $target"

if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemd-sysusers "$SYSUSERSDIR/tinyscada.conf"
  systemctl daemon-reload
  echo "start with: systemctl enable --now tinyscada.target"
fi
