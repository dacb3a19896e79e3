# Sourced by scripts/demo and scripts/test: make .venv if missing and install
# the project (editable) with the requested extras. Re-installs only when
# setup.cfg or pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.wool_local-install-$extras"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | cksum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    spec="$root"
    [ -n "$extras" ] && spec="$root[$extras]"
    "$venv/bin/python" -m pip install -q -e "$spec"
    echo "$want" > "$stamp"
fi
PY="$venv/bin/python"
