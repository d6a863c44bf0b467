#!/bin/sh
# The whole test suite, as CI runs it: install dependencies, build with
# AddressSanitizer + UndefinedBehaviorSanitizer, run unit and integration
# tests, print "N passed, N failed" and exit non-zero on any failure.
set -eu
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

BUILD=${KILN_TEST_BUILD:-build-asan}
if [ ! -f "$BUILD/build.ninja" ]; then
	meson setup "$BUILD" -Db_sanitize=address,undefined -Db_lundef=false \
		-Dbuildtype=debug
fi
ninja -C "$BUILD"

# The fixture image is built once per machine (it needs apt for the .debs).
./scripts/make-busybox-layout.sh "${KILN_FIXTURE_DIR:-/var/tmp/kiln-fixtures}/busybox"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

set +e
meson test -C "$BUILD" --print-errorlogs --no-rebuild "$@"
rc=$?
set -e

# meson's summary as the plain closing line.
log="$BUILD/meson-logs/testlog.json"
if [ -f "$log" ]; then
	passed=$(jq -s '[.[] | select(.result == "OK")] | length' "$log")
	failed=$(jq -s '[.[] | select(.result != "OK" and .result != "SKIP")] | length' "$log")
	skipped=$(jq -s '[.[] | select(.result == "SKIP")] | length' "$log")
	echo "$passed passed, $failed failed, $skipped skipped"
	[ "$failed" = 0 ] || rc=1
fi
exit $rc
