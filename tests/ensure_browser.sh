#!/usr/bin/env bash
# Browser tests drive Debian's chromium through playwright; install it when missing (root, apt only).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium not found and cannot be installed here: browser tests will be skipped" >&2
fi
