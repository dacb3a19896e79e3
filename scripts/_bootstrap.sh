# Sourced by scripts/demo, scripts/test and .ci/run: make .venv if missing and
# install the project (editable) with the requested extras, a comma list such as
# "test,dev". Extras installed before are kept, so callers asking for fewer do
# not re-install. Installs only when setup.cfg or pyproject.toml changed since
# the last install, or an extra is asked for that is not installed yet.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# The stamp holds the checksum of the files the last install read, then its extras.
stamp="$venv/.wool_local-install"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | cksum)"
have="" had_extras=""
if [ -f "$stamp" ]; then
    { read -r have || true; read -r had_extras || true; } < "$stamp"
fi
extras="$(tr ',' '\n' <<< "$had_extras,${1:-}" | sed '/^$/d' | sort -u | paste -sd, -)"
if [ "$have" != "$want" ] || [ "$extras" != "$had_extras" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    spec="$root"
    [ -n "$extras" ] && spec="$root[$extras]"
    "$venv/bin/python" -m pip install -q -e "$spec"
    printf '%s\n%s\n' "$want" "$extras" > "$stamp"
fi
PY="$venv/bin/python"
