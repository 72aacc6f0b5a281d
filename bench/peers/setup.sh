#!/usr/bin/env bash
# Create the peers' virtual environments for bench/peers/sitting.py (once per machine):
#   $PEERS_VENVS/nvflare  nvflare==2.9.0 + torch==2.13.0 (CPU)
#   $PEERS_VENVS/flwr     flwr==1.42.0   + torch==2.13.0 (CPU)
# PEERS_VENVS defaults to bench/peers/.venvs (git-ignored). "ours" needs no venv of its own:
# it runs from the repository's .venv (`make install`, an editable install of this checkout).
# torch is installed first, pinned, so that nvflare/flwr do not pull an unpinned (CUDA) build.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENVS="${PEERS_VENVS:-$HERE/.venvs}"
PY="${PYTHON:-python3.11}"
TORCH_PIN="torch==2.13.0"
mkdir -p "$VENVS"

if [ ! -x "$VENVS/nvflare/bin/python" ]; then
  "$PY" -m venv "$VENVS/nvflare"
  "$VENVS/nvflare/bin/pip" install -q "$TORCH_PIN"
  "$VENVS/nvflare/bin/pip" install -q nvflare==2.9.0
fi

if [ ! -x "$VENVS/flwr/bin/python" ]; then
  "$PY" -m venv "$VENVS/flwr"
  "$VENVS/flwr/bin/pip" install -q "$TORCH_PIN"
  # flwr 1.42.0 declares certifi>=2026.10.19, which an index may not have yet (when the harness
  # was written, the newest was 2026.10.18). Resolve normally first; if that fails, install
  # flwr without deps and its declared requirements with certifi relaxed by one release
  # (`pip check` then reports exactly that one mismatch).
  if ! "$VENVS/flwr/bin/pip" install -q flwr==1.42.0; then
    echo "setup.sh: flwr 1.42.0 did not resolve; installing it with certifi==2026.10.18" >&2
    tmp=$(mktemp -d)
    "$VENVS/flwr/bin/pip" download -q --no-deps -d "$tmp" flwr==1.42.0
    "$VENVS/flwr/bin/python" - "$tmp"/flwr-1.42.0-*.whl > "$tmp/reqs.txt" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = wheel.read("flwr-1.42.0.dist-info/METADATA").decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist: ") and "extra ==" not in line:
        req = line[len("Requires-Dist: "):]
        if not req.startswith("certifi"):
            print(req)
print("certifi==2026.10.18")
PY
    "$VENVS/flwr/bin/pip" install -q -r "$tmp/reqs.txt"
    "$VENVS/flwr/bin/pip" install -q --no-deps "$tmp"/flwr-1.42.0-*.whl
    rm -rf "$tmp"
  fi
fi

"$VENVS/nvflare/bin/python" -c "import nvflare, torch; print('nvflare', nvflare.__version__, 'torch', torch.__version__)"
"$VENVS/flwr/bin/python" -c "import flwr, torch; print('flwr', flwr.__version__, 'torch', torch.__version__)"
