#!/bin/bash
# System packages some tests use, on Debian as root (CI): dicom3tools (dciodvfy, the DICOM
# validator). Elsewhere it only says what is missing; those tests then skip with the reason.
set -euo pipefail
need=()
command -v dciodvfy > /dev/null || need+=(dicom3tools)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  # Keep package scripts from starting services during the install.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" > /dev/null \
    || { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" > /dev/null; }
else
  echo "not installed (tests that need them skip): ${need[*]}" >&2
fi
