#!/usr/bin/env bash
# Installs Debian's docker-compose (the Python 1.29 tool; it parses and validates
# docker-compose.yml without a Docker daemon) when no `docker-compose` is on PATH. The test
# suite uses it to check the deployment file. Idempotent; needs root (or sudo) to install.
set -euo pipefail

if command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose present: $(docker-compose version --short 2>/dev/null || docker-compose --version)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "docker-compose is missing and apt-get is not available: install Docker Compose" \
         "(see Docker's documentation); the deployment tests skip without it." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "docker-compose is missing; run this script as root to install it with apt-get." >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
echo "installed docker-compose: $(docker-compose --version)"
