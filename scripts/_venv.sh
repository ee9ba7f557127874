# Sourced by scripts/run and scripts/test: make .venv if it is missing and
# install the project into it (non-editable, so twistd finds the plugin).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
install_project() {
    # $1: the extras, e.g. "[test]" or ""
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --upgrade --upgrade-strategy only-if-needed "$root$1"
    # pip keeps the same version installed; make sure it is this tree's code.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --force-reinstall "$root"
}
