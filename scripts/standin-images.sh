#!/usr/bin/env bash
# Prepares a machine that reaches Debian's packages and the package index but no container registry to build and
# run docker-compose.yml: installs Docker and a compose client, starts dockerd, and builds stand-ins for the
# images the stack starts from (python:3.11-slim, redis:7, postgres:15) out of Debian packages, under the same
# names, so that the Dockerfile and docker-compose.yml build and run unchanged. It also gives the image's build
# stage this machine's PyTorch wheel and CA bundle (build-local/). Run as root; running it again is cheap.
# Machines that reach Docker Hub need none of this.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
standin=$here/standin
base=vdc-standin/debian:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "standin-images: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run me as root: I install packages and start dockerd"
    exit 1
fi

install_tools() {
    local missing=()
    command -v dockerd > /dev/null || missing+=(docker.io)
    docker compose version > /dev/null 2>&1 || command -v docker-compose > /dev/null || missing+=(docker-compose)
    command -v debootstrap > /dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    fi
}

start_dockerd() {
    docker info > /dev/null 2>&1 && return
    log "starting dockerd (its log: /var/log/dockerd.log)"
    nohup dockerd > /var/log/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info > /dev/null 2>&1 && return
        sleep 0.5
    done
    log "dockerd did not answer within 30 s; see /var/log/dockerd.log"
    exit 1
}

# A fingerprint of the files an image is made from: a stand-in is rebuilt when they change, and an image under
# the same name without this label (a real one, pulled from a registry) is left alone.
fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

label_of() { docker image inspect --format '{{ index .Config.Labels "vdc.standin" }}' "$1" 2>/dev/null || true; }

build_base() {
    local wanted
    wanted=$(fingerprint "$0")
    [ "$(label_of "$base")" = "$wanted" ] && return
    log "building $base from Debian packages (debootstrap, about 30 s)"
    local rootfs
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
        || { log "debootstrap failed; its log: $rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
    # As in Debian's own images: packages do not start their services while an image is built, and apt keeps
    # neither the packages it downloaded nor its caches in the image's layers.
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"'
    cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<APT
DPkg::Post-Invoke { $clean; };
APT::Update::Post-Invoke { $clean; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import --change "LABEL vdc.standin=$wanted" --change 'CMD ["bash"]' - "$base" > /dev/null
    rm -rf "$rootfs"
}

build_standin() {
    local image=$1 name=$2 wanted
    local files=("$standin/$name.Dockerfile")
    [ -f "$standin/$name-entrypoint.sh" ] && files+=("$standin/$name-entrypoint.sh")
    wanted=$(fingerprint "$0" "${files[@]}")
    local have
    have=$(label_of "$image")
    if docker image inspect "$image" > /dev/null 2>&1 && [ -z "$have" ]; then
        log "$image is a real image; keeping it"
        return
    fi
    [ "$have" = "$wanted" ] && return
    log "building the stand-in for $image"
    docker build --quiet --label "vdc.standin=$wanted" -t "$image" -f "$standin/$name.Dockerfile" "$standin" > /dev/null
}

# pip's find-links folders and CA bundle on this machine, from its environment and configuration.
pip_setting() {
    local key=$1 env=$2
    [ -n "${!env:-}" ] && echo "${!env}"
    python3 -m pip config list 2> /dev/null | sed -n "s/^[a-z:]*\.$key='\(.*\)'$/\1/p"
}

give_build_files() {
    local wheel="" folder
    for folder in $(pip_setting find-links PIP_FIND_LINKS); do
        wheel=$(find "$folder" -maxdepth 1 -name 'torch-2.13.0+cpu-cp311-*x86_64.whl' -print -quit 2> /dev/null)
        [ -n "$wheel" ] && break
    done
    if [ -n "$wheel" ]; then
        log "the image will install $(basename "$wheel") from build-local/"
        ln -f "$wheel" "$root/build-local/" 2> /dev/null || cp "$wheel" "$root/build-local/"
    fi
    local cert=""
    read -r cert < <(pip_setting cert PIP_CERT) || true
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        log "the image's build stage will trust $cert"
        cp "$cert" "$root/build-local/ca-certificates.crt"
    fi
}

install_tools
start_dockerd
build_base
build_standin python:3.11-slim python
build_standin redis:7 redis
build_standin postgres:15 postgres
give_build_files
# Images that a rebuilt stand-in replaced.
docker image prune --force --filter label=vdc.standin > /dev/null
if docker compose version > /dev/null 2>&1; then compose="docker compose"; else compose=docker-compose; fi
log "ready: $compose build && $compose up -d"
