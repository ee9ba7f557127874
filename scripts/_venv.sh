# Sourced by scripts/run and scripts/test: make the virtualenv if it is missing
# and install the project into it (non-editable, so twistd finds the plugin).
# FMQ_PYTHON picks the interpreter (e.g. FMQ_PYTHON=pypy3); each interpreter
# has its own virtualenv: .venv for CPython, .venv-pypy3 for PyPy.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${FMQ_PYTHON:-}
if [ -z "$python" ]; then
    venv="$root/.venv"
else
    venv="$root/.venv-$(basename "$python")"
fi
if [ ! -x "$venv/bin/python" ]; then
    if [ -n "$python" ]; then
        command -v "$python" >/dev/null || {
            echo "fmq: $python not found (for PyPy: apt-get install pypy3 pypy3-venv pypy3-dev)" >&2
            exit 1
        }
        "$python" -m venv "$venv"
    else
        python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
is_pypy=$("$venv/bin/python" -c 'import platform; print(int(platform.python_implementation() == "PyPy"))')
install_project() {
    # $1: the extras, e.g. "[test]" or ""
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --upgrade --upgrade-strategy only-if-needed "$root$1"
    if [ "$is_pypy" = 1 ] && [ "$1" = "[test]" ]; then
        # treq without Twisted's TLS extra (see setup.py)
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-deps "treq>=24.9"
    fi
    if [ "$is_pypy" = 1 ]; then
        # txredisapi without Twisted's TLS extra (see setup.py)
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-deps "txredisapi>=1.4.10"
    fi
    # pip keeps the same version installed; make sure it is this tree's code.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --force-reinstall "$root"
}
