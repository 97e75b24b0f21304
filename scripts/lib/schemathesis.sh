# shellcheck shell=bash
# schemathesis (PyPI, pinned) in a venv under the git-ignored .tools/, for the api's
# property-based test (services/api/tests/api/schemathesis.rs) and scripts/reliability.d/http.sh.
#
#   source scripts/lib/schemathesis.sh; st="$(schemathesis_ensure)"
#
# Prints the path of the `st` executable; installs on first use (about 30 s). Needs python3
# with venv (Debian: python3-venv, installed through scripts/lib/deps.sh when missing).
# Environment: SCHEMATHESIS_VERSION, SCHEMATHESIS_VENV.

SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"

schemathesis_ensure() {
    local repo venv
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    venv="${SCHEMATHESIS_VENV:-$repo/.tools/schemathesis-$SCHEMATHESIS_VERSION}"
    if [[ -x "$venv/bin/st" ]] && "$venv/bin/st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
        echo "$venv/bin/st"
        return 0
    fi
    local python
    python="$(command -v python3)" || { echo "schemathesis: python3 not found" >&2; return 1; }
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >&2 2>/dev/null; then
        rm -rf "$venv"
        # shellcheck source=deps.sh
        declare -F deps_apt_install >/dev/null || DEPS_SOURCE_ONLY=1 source "$repo/scripts/lib/deps.sh"
        deps_apt_install python3-venv >&2 || return 1
        "$python" -m venv "$venv" >&2 || return 1
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2 || return 1
    echo "$venv/bin/st"
}
