#!/usr/bin/env bash
# Installs Debian's chromium for the web UI's browser test (tests/e2e/test_ui_browser.py); idempotent.
# Skips when /usr/bin/chromium exists. Never fails the caller: without a browser the test skips and says why.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-browser: not root, so chromium is not installed; the browser test will skip (as root: apt-get install -y chromium)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; install Chromium as /usr/bin/chromium or the browser test will skip" >&2
    exit 0
fi
echo "install-browser: installing Debian's chromium for the UI browser test" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be old or missing on a fresh machine: refresh them once, then install.
if ! apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
        || echo "install-browser: apt-get install chromium failed; the browser test will skip" >&2
fi
exit 0
