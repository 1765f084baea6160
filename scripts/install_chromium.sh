#!/bin/sh
# Installs headless Chromium from the system packages for the dashboard's browser test, only
# when no Chromium is on PATH (make test runs this). Exits 0 either way: when it cannot install
# (no root, no apt-get, no network), it says why and the browser test skips with that reason.
for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then exit 0; fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no chromium and no apt-get: the browser test will skip" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; else
        echo "install_chromium: no chromium, and installing it needs root (run:" \
             "apt-get install -y chromium): the browser test will skip" >&2
        exit 0
    fi
fi
echo "install_chromium: installing chromium with apt-get (once)" >&2
if ! { ${SUDO:-} apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq chromium; } >&2; then
    echo "install_chromium: apt-get could not install chromium: the browser test will skip" >&2
fi
exit 0
