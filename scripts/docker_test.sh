#!/usr/bin/env bash
# `make docker-test`: the project's Dockerfile built for real and run on CPUs, on a base image
# made on this machine (nvcr.io cannot be reached from here), then everything removed again.
#
#   bash scripts/docker_test.sh          # as root; needs apt (Debian) and ~15 GB free in WORK
#
# Phases, each timed into results/docker_test.json:
#   install  docker.io and debootstrap from apt, if missing
#   daemon   a private dockerd (own data root, exec root and socket; no iptables, no bridge)
#   base     debootstrap'd minimal Debian bookworm + this machine's pyenv Python 3.12 at the same
#            path, `docker import`ed (base_rootfs); then `pip install torch==$TORCH` from PyPI in a
#            container of it, `docker commit`ed (base_torch)
#   build    `docker build --build-arg BASE_IMAGE=<that base>` of the unmodified Dockerfile
#   run      the image's entry point (examples/pretrain_gpt_rw.sh) on CPUs: a tiny corpus mounted
#            as data/small, CONFIG=smoke_cpu, --train-iters $ITERS
# The log must show every iteration (Megatron's log lines) with the reweighting keys, and the run's
# TensorBoard events and Megatron checkpoint (torch_dist) must exist. Not covered: the NGC base (unreachable) and GPUs (none here).
#
# Environment: WORK (scratch, default a fresh dir under /tmp), STORAGE_DRIVER (overlay2; vfs
# where the file system cannot host overlayfs: it copies the whole rootfs per layer), PYTHON
# (the project's venv, to build the corpus), PY312 (the Python to copy). torch and its CUDA
# libraries (~3 GB) are downloaded each time: pip's cache, mounted into the container, stayed
# empty here (cause not found), so it is not mounted.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
# The prefix of the Python 3.12 that make test uses (scripts/find_python.sh: PATH, then pyenv).
PY312="${PY312:-$(dirname "$(dirname "$(bash scripts/find_python.sh 3.12 || true)")")}"
TORCH="${TORCH:-2.14.1}"
ITERS="${ITERS:-6}"
STORAGE_DRIVER="${STORAGE_DRIVER:-overlay2}"
RESULTS="${RESULTS:-$REPO/results/docker_test.json}"
WORK="${WORK:-$(mktemp -d /tmp/megatron-rw-docker-test.XXXXXX)}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=megatron-rw-base:local
IMAGE=megatron-rw:docker-test
SOCK="$WORK/docker.sock"
# The package's client, matching its daemon (another `docker` may come first on PATH).
DOCKER_BIN="$(command -v /usr/bin/docker || command -v docker || true)"

say() { echo "docker_test.sh: $*"; }
die() { say "$*" >&2; exit 1; }
# Exit 77: this machine cannot run the test at all (not root, no Python 3.12 to copy, no Docker
# engine that starts). .ci/run reports that as a skip; a failed build or run is a failure.
cannot() { say "cannot run here: $*" >&2; exit 77; }
dk() { "$DOCKER_BIN" -H "unix://$SOCK" "$@"; }

[[ $(id -u) == 0 ]] || cannot "needs root (dockerd, debootstrap)"
[[ -x "$PY312/bin/python3.12" ]] || cannot "no Python 3.12 at $PY312 (set PY312)"
[[ -x "$PYTHON" ]] || die "no project venv at $PYTHON (make venv, or set PYTHON)"
mkdir -p "$WORK" "$(dirname "$RESULTS")"

declare -A SECS
phase_start=0
begin() { phase_start=$(date +%s%N); say "phase $1"; }
end() {
    local ms=$(( ($(date +%s%N) - phase_start) / 1000000 ))
    SECS[$1]=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    say "phase $1: ${SECS[$1]} s"
}
disk_free() { df -B1 --output=avail "$WORK" | tail -n 1 | tr -d ' '; }
DISK_BEFORE=$(disk_free)
# The lowest free space, sampled every 2 s: the peak may fall inside `docker commit` or the build.
( lowest=$DISK_BEFORE; echo "$lowest" >"$WORK/disk_min"
  while sleep 2; do f=$(disk_free); (( f < lowest )) && lowest=$f; echo "$lowest" >"$WORK/disk_min"; done
) &
SAMPLER_PID=$!

DOCKERD_PID=""
cleanup() {
    local rc=$?
    set +e
    kill "$SAMPLER_PID" 2>/dev/null
    if [[ -n "$DOCKERD_PID" ]]; then
        # Containers first, so that dockerd unmounts their file systems. Images go with the
        # data root below: `docker rmi` of the 6 GB base took minutes on 2 busy cores.
        dk ps -aq | xargs -r "$DOCKER_BIN" -H "unix://$SOCK" rm -f >/dev/null 2>&1
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$DOCKERD_PID" 2>/dev/null
        # The containerd it started exits with it; dockerd leaves netns/default (a bind mount
        # of its network namespace) and, after a crash, overlay mounts behind.
        findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | xargs -r -n 1 umount -l
    fi
    rm -rf "$WORK"
    say "cleaned up $WORK (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT

begin install
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq -o Acquire::Languages=en \
        && apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null; } \
        || cannot "docker.io and debootstrap could not be installed from apt"
    DOCKER_BIN=/usr/bin/docker
fi
end install

start_dockerd() {
    dockerd --storage-driver "$1" --iptables=false --ip6tables=false --bridge=none \
        --data-root "$WORK/data-root" --exec-root "$WORK/exec-root" --pidfile "$WORK/dockerd.pid" \
        -H "unix://$SOCK" >>"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do dk info >/dev/null 2>&1 && return 0; sleep 0.5; done
    kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null; DOCKERD_PID=""
    return 1
}
begin daemon
# overlay2 needs a file system that can host overlayfs; vfs works anywhere (copying each layer).
if ! start_dockerd "$STORAGE_DRIVER"; then
    say "dockerd did not start with $STORAGE_DRIVER; trying vfs"
    STORAGE_DRIVER=vfs
    start_dockerd vfs || { tail -20 "$WORK/dockerd.log" >&2; cannot "dockerd did not start"; }
fi
end daemon

begin base_rootfs
rootfs="$WORK/rootfs"
# The shared libraries the copied Python's extension modules link (ssl, ctypes, sqlite3, ...).
debootstrap --variant=minbase \
    --include=libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,zlib1g,libreadline8,libncursesw6,libuuid1,libexpat1 \
    bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
# Debian bookworm has Python 3.11 only; megatron-core 0.19 needs 3.12. This pyenv build was made
# on bookworm, so it runs there; same path inside, so its shebangs and RPATH hold. Its
# site-packages is left empty but for pip (the host's may hold machine-specific .pth files).
mkdir -p "$rootfs$(dirname "$PY312")"
tar -C "$(dirname "$PY312")" --exclude="$(basename "$PY312")/lib/python3.12/site-packages/*.pth" \
    -cf - "$(basename "$PY312")" | tar -C "$rootfs$(dirname "$PY312")" -xf -
for name in python python3 pip pip3; do
    target=python3.12; [[ $name == pip* ]] && target=pip3.12
    ln -sf "$PY312/bin/$target" "$rootfs/usr/local/bin/$name"
done
# This machine reaches PyPI through a TLS-terminating proxy whose CA is in the host's bundle; a
# base made here carries that bundle, as a site's own base image carries its CA.
mkdir -p "$rootfs/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
apt_clean="$rootfs/var/cache/apt/archives"; rm -f "$apt_clean"/*.deb
tar -C "$rootfs" -cf - . | dk import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" - "$BASE-stage" >/dev/null
rm -rf "$rootfs"
end base_rootfs
begin base_torch
dk run --name torch-install --network host "$BASE-stage" \
    pip install -q --disable-pip-version-check "torch==$TORCH"
dk commit torch-install "$BASE" >/dev/null
dk rm torch-install >/dev/null
dk rmi "$BASE-stage" >/dev/null
dk run --rm "$BASE" python -c "import sys, torch; print('base:', sys.version.split()[0], 'torch', torch.__version__)"
end base_torch

begin build
dk build --network host --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" . 2>&1 | tee "$WORK/build.log" \
    | grep -E '^Step |Successfully' || true
dk image inspect "$IMAGE" >/dev/null 2>&1 || { tail -30 "$WORK/build.log" >&2; die "docker build failed"; }
end build

begin run
mkdir -p "$WORK/data" "$WORK/runs"
"$PYTHON" -c "import sys; from tests.data.tiny_corpus import build_tiny_corpus; build_tiny_corpus(sys.argv[1])" \
    "$WORK/data/small" >/dev/null
# The README's `docker run`, without --gpus: data/small is the launcher's default DATA; CPU, so
# two gloo processes (GPUS_PER_NODE's default without CUDA).
dk run --rm --network host --ipc=host \
    -v "$WORK/data:/workspace/megatron-rw/data" -v "$WORK/runs:/workspace/megatron-rw/runs" \
    -e CONFIG=examples/configs/smoke_cpu.sh "$IMAGE" \
    --train-iters "$ITERS" --eval-interval "$ITERS" --save-interval "$ITERS" 2>&1 | tee "$WORK/run.log"
end run

# What the run must show: every iteration logged with the reweighting keys, and its outputs.
ITER_LINE=' iteration +[0-9]+/ +[0-9]+ \| consumed samples'
iter_lines=$(grep -cE "$ITER_LINE" "$WORK/run.log" || true)
rw_lines=$(grep -E "$ITER_LINE" "$WORK/run.log" | grep -c 'weighted lm loss.*sample weight ess' || true)
(( iter_lines == ITERS && rw_lines == ITERS )) \
    || die "expected $ITERS iteration lines with the reweighting keys, got $iter_lines ($rw_lines)"
[[ "$(cat "$WORK/runs/smoke_cpu/latest_checkpointed_iteration.txt")" == "$ITERS" ]] || die "no checkpoint"
[[ -f "$WORK/runs/smoke_cpu/iter_$(printf %07d "$ITERS")/metadata.json" ]] || die "no torch_dist checkpoint"
compgen -G "$WORK/runs/smoke_cpu/tensorboard/events.out.tfevents.*" >/dev/null || die "no TensorBoard events"

sizes_json=$(dk image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | "$PYTHON" -c '
import json, sys
print(json.dumps(dict(line.split(" ", 1) for line in sys.stdin.read().splitlines())))')
used_json=$(du -sbx "$WORK/data-root" | cut -f1)
last_line=$(grep -E "$ITER_LINE" "$WORK/run.log" | tail -n 1 | sed 's/"/\\"/g')
"$PYTHON" - "$RESULTS" <<EOF
import json, sys
result = {
    "what": "scripts/docker_test.sh: the Dockerfile built on a local debootstrap base, "
            "a CPU run through its entry point",
    "storage_driver": "$STORAGE_DRIVER", "torch": "$TORCH", "iterations": $ITERS,
    "seconds": {"install": ${SECS[install]}, "daemon": ${SECS[daemon]},
                "base_rootfs": ${SECS[base_rootfs]}, "base_torch": ${SECS[base_torch]},
                "build": ${SECS[build]}, "run": ${SECS[run]}},
    "load_average_at_end": "$(cut -d' ' -f1-3 /proc/loadavg)", "cores": $(nproc),
    "image_sizes": $sizes_json,
    "data_root_bytes": $used_json,
    "disk_free_bytes": {"before": $DISK_BEFORE, "lowest": $(cat "$WORK/disk_min")},
    "last_iteration_line": "$last_line".strip(),
}
json.dump(result, open(sys.argv[1], "w"), indent=1)
print(json.dumps(result, indent=1))
EOF
say "passed; results in $RESULTS"
