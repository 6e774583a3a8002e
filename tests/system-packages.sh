#!/bin/bash
# System packages some tests use, on Debian as root (CI): dicom3tools (dciodvfy, the DICOM
# validator), Orthanc (a real PACS for the DICOM node tests; the tests start their own on
# loopback ports, so the package's service is kept from starting) with its DICOMweb plugin
# (orthanc-dicomweb), dcmtk (storescu, echoscu:
# a second DICOM client), openssl (test certificates for DICOM TLS), chromium (the results
# page, rendered headless) and rsyslog (a real syslog collector for the audit trail; the tests
# start their own with a generated configuration on a loopback port). Elsewhere it only says what
# is missing; those tests then skip with the reason.
set -euo pipefail
need=()
command -v dciodvfy > /dev/null || need+=(dicom3tools)
command -v Orthanc > /dev/null || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/bin/storescu ] && [ -x /usr/bin/echoscu ] || need+=(dcmtk)
command -v openssl > /dev/null || need+=(openssl)
command -v chromium > /dev/null || need+=(chromium)
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  # Keep package scripts from starting services (Orthanc's, on its default ports) meanwhile.
  made=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made=1
  fi
  install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" > /dev/null; }
  install || { apt-get update -q > /dev/null && install; } \
    || echo "could not install (tests that need them skip): ${need[*]}" >&2
  [ -z "$made" ] || rm -f /usr/sbin/policy-rc.d
else
  echo "not installed (tests that need them skip): ${need[*]}" >&2
fi
