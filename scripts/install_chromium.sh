#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the dashboard browser test, when missing.
# Idempotent: does nothing if /usr/bin/chromium (or $CHROMIUM) already runs.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1; then
    echo "chromium present: $("$CHROMIUM" --version 2>/dev/null)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation
"$CHROMIUM" --version
