#!/usr/bin/env bash
# DEVELOPMENT ONLY: makes a throw-away certificate authority and certificates for the broker's
# TLS listener (deploy/mosquitto/security/tls.conf), with openssl. Never use them beyond a
# developer's machine or a test: the CA key sits unprotected next to the certificates.
#
#   scripts/dev-ca.sh [OUT_DIR]       default: .local/dev-ca (git-ignored); kept if present
#   scripts/dev-ca.sh --force [DIR]   make new ones even if they exist
#
# Writes OUT_DIR/ca.crt (what clients trust: --mqtt-ca-file, mosquitto_pub --cafile),
# ca.key, server.crt + server.key (names: localhost, 127.0.0.1, ::1 and DEV_CA_SERVER_NAMES,
# e.g. "DNS:broker.lan,IP:192.168.1.5"), client.crt + client.key (CN dev-client, for a
# listener that requires client certificates). ECDSA P-256, valid DEV_CA_DAYS (default 30).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
force=0
if [[ "${1:-}" == --force ]]; then
    force=1
    shift
fi
out="${1:-$repo/.local/dev-ca}"
days="${DEV_CA_DAYS:-30}"
command -v openssl >/dev/null || {
    echo "dev-ca: openssl is required (Debian package openssl)" >&2
    exit 1
}
if ((!force)) && [[ -s "$out/ca.crt" && -s "$out/server.crt" && -s "$out/server.key" ]] &&
    openssl x509 -in "$out/server.crt" -noout -checkend 86400 >/dev/null 2>&1; then
    echo "$out"
    exit 0
fi
mkdir -p "$out"
chmod 700 "$out"
cd "$out"
umask 077
cat >README.txt <<TXT
DEVELOPMENT ONLY. Made by scripts/dev-ca.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ).
This CA's private key is unprotected: trust ca.crt nowhere but on this machine and in tests.
TXT
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=iot-telemetry DEVELOPMENT CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
sign() { # sign NAME CN SAN EXTENDED_KEY_USAGE
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' \
        "$3" "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
san="DNS:localhost,IP:127.0.0.1,IP:::1${DEV_CA_SERVER_NAMES:+,$DEV_CA_SERVER_NAMES}"
sign server localhost "$san" serverAuth
sign client dev-client "DNS:dev-client" clientAuth
# The broker may run as another user (Mosquitto drops root to 'mosquitto'): certificates are
# public, the server key must stay readable to whoever starts the broker.
chmod 644 ca.crt server.crt client.crt
echo "$out"
