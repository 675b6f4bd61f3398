#!/usr/bin/env bash
# Sets up the machine and runs the whole test suite. The suite is built optimised (-c release,
# with testing enabled): the numeric tests and the kd runs they make take seconds instead of
# minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh
swift build -c release --build-tests -Xswiftc -enable-testing
swift test -c release --skip-build -Xswiftc -enable-testing
