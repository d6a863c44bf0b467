#!/bin/bash
# kill -9 of kiln in the middle of a build, then a rebuild that succeeds
# with fsck clean, no leftover mounts and no leftover container processes.
. "$(dirname "$0")/lib.sh"

MARK="kiln-kill-test-$$"
cat >"$T/g.json" <<JSON
{"version":1,"ops":[
 {"id":"base","op":"source.image","ref":"oci-layout://$LAYOUT:latest"},
 {"id":"pre","op":"exec","input":"base","args":["sh","-c","dd if=/dev/zero of=/blob bs=1M count=8 2>/dev/null"]},
 {"id":"slow","op":"exec","input":"pre","args":["sh","-c","if [ ! -e /state/first ]; then touch /state/first; exec sh -c \"sleep 300; true\" $MARK; fi; echo finished > /done"],
  "mounts":[{"target":"/state","type":"cache","id":"kill-test"}]}
],"output":"slow"}
JSON

for round in 1 2 3; do
	rm -rf --one-file-system "$KILN_ROOT/worker/cachemounts"
	"$KILN" build --progress json --def "$T/g.json" 2>"$T/bg.json" &
	BG_PID=$!
	# Wait until the slow step is really running inside the container.
	for _ in $(seq 1 300); do
		pgrep -f "$MARK" >/dev/null && break
		sleep 0.1
	done
	pgrep -f "$MARK" >/dev/null || fail "round $round: the slow step never started: $(tail -3 "$T/bg.json")"
	kill -9 "$BG_PID"
	wait "$BG_PID" 2>/dev/null || true
	BG_PID=

	kbuild --def "$T/g.json" -o "$T/out" || fail "round $round: rebuild after kill -9 failed: $(tail -3 "$T/progress.json")"
	assert_eq "$(cat "$T/out/done")" "finished" "round $round result"
	pgrep -f "$MARK" >/dev/null && fail "round $round: container process survived"
	assert_no_mounts
	assert_fsck_clean
	"$KILN" prune --all >/dev/null || fail "prune"
done
echo "ok: kill -9 mid-build recovers (3 rounds)"
