#!/usr/bin/env bash
# The two commands of the README, on a fresh machine with only Python 3.11:
#   ./dev.sh demo [--port N]   set up, then run the platform on embedded defaults
#   ./dev.sh test [pytest args] set up (Python and Debian packages), then run every test
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-python3}

setup_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the dependency list changed since the last setup.
    local stamp="$VENV/.congvu-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[test]"
        touch "$stamp"
    fi
}

# Debian packages the tests use; installed only where missing (CI runs as root).
# chromium: the browser tests (Playwright drives Debian's build; it downloads none).
# slapd, ldap-utils: a throwaway OpenLDAP server for the directory tests (tests/directory).
# swaks: a real SMTP client for the mail gateway tests; opendkim-tools: opendkim-testmsg verifies DKIM.
# opendkim: OpenDKIM's library verifies our DKIM signatures offline (`opendkim -t` with TestDNSData;
#   opendkim-testmsg needs live DNS), and bench/run_mail.py runs it as Postfix's milter.
# postfix: smtp-source, smtp-sink and a throwaway Postfix for bench/run_mail.py (the system
#   service is not started: nothing in a container starts it; `postfix -c DIR` runs our own).
DEBIAN_PACKAGES=(chromium slapd ldap-utils swaks opendkim-tools opendkim postfix)
setup_debian() {
    local missing=()
    for package in "${DEBIAN_PACKAGES[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        else
            echo "note: not root; tests needing ${missing[*]} will be skipped" >&2
        fi
    fi
}

# The openid-client end-to-end test (tests/e2e_node) runs where node is installed.
setup_node() {
    if command -v npm >/dev/null 2>&1 && [ ! -d tests/e2e_node/node_modules ]; then
        npm ci --silent --no-audit --no-fund --prefix tests/e2e_node \
            || echo "note: npm ci failed; the openid-client test will be skipped" >&2
    fi
}

postgres_answers() {
    "$VENV/bin/python" - <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

case "${1:-}" in
    demo)
        shift
        setup_python
        exec "$VENV/bin/congvu" demo "$@"
        ;;
    test)
        shift
        setup_python
        setup_debian
        setup_node
        if [ -z "${CONGVU_TEST_DATABASE_URL:-}" ] && postgres_answers; then
            export CONGVU_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test"
        fi
        echo "PostgreSQL tests: ${CONGVU_TEST_DATABASE_URL:-off (no server on 127.0.0.1:5432)}"
        set +e
        "$VENV/bin/python" -m pytest "$@"
        status=$?
        set -e
        if [ "$status" -eq 5 ]; then
            echo "error: pytest collected no tests" >&2
            exit 1
        fi
        exit "$status"
        ;;
    *)
        echo "usage: ./dev.sh demo [--port N] | ./dev.sh test [pytest arguments]" >&2
        exit 2
        ;;
esac
