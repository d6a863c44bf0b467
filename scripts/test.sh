#!/bin/sh
# The whole test suite, as CI runs it: install dependencies, compile the
# default (optimized) build, build with
# AddressSanitizer + UndefinedBehaviorSanitizer and run every unit and
# integration test; then build with ThreadSanitizer and run the tests that
# drive the multi-threaded solver, exec, remote cache and compression paths. Prints
# "N passed, N failed" and exits non-zero on any failure.
# Extra arguments go to the ASan `meson test` run (e.g. a test name).
set -eu
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

configure() { # configure DIR SANITIZER
	if [ ! -f "$1/build.ninja" ]; then
		meson setup "$1" -Db_sanitize="$2" -Db_lundef=false -Dbuildtype=debug
	fi
	ninja -C "$1"
}

ASAN_BUILD=${KILN_TEST_BUILD:-build-asan}
TSAN_BUILD=${KILN_TSAN_BUILD:-build-tsan}
configure "$ASAN_BUILD" address,undefined
configure "$TSAN_BUILD" thread
# The default build too (what scripts/example.sh builds: -O2, -Werror),
# compiled only: the optimizer finds warnings -O0 does not.
[ -f build/build.ninja ] || meson setup build
ninja -C build

# The fixture image is built once per machine (it needs apt for the .debs).
./scripts/make-busybox-layout.sh "${KILN_FIXTURE_DIR:-/var/tmp/kiln-fixtures}/busybox"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

rc=0
meson test -C "$ASAN_BUILD" --print-errorlogs --no-rebuild "$@" || rc=1
if [ $# -eq 0 ]; then
	# The cluster test's kill loop is shortened here: TSan watches the
	# daemons' threads, the 20 rounds of the ASan run count the failures.
	KILN_KILL_LOOP_N=${KILN_TSAN_KILL_LOOP_N:-3} \
	meson test -C "$TSAN_BUILD" --print-errorlogs --no-rebuild \
		solver exec cache rcache export proto peer jobs worker-table pool tree it-example it-exec it-kill \
		it-dockerfile it-cluster-registry it-cluster-build it-cluster-tls it-cache-local \
		it-cluster-cache-s3 it-cluster-transfer-s3 it-cluster-push it-cluster-push-auth || rc=1
fi

# meson's results as the plain closing line.
passed=0 failed=0 skipped=0
for b in "$ASAN_BUILD" "$TSAN_BUILD"; do
	log="$b/meson-logs/testlog.json"
	[ -f "$log" ] || continue
	passed=$((passed + $(jq -s '[.[] | select(.result == "OK")] | length' "$log")))
	failed=$((failed + $(jq -s '[.[] | select(.result != "OK" and .result != "SKIP")] | length' "$log")))
	skipped=$((skipped + $(jq -s '[.[] | select(.result == "SKIP")] | length' "$log")))
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] || rc=1
exit $rc
