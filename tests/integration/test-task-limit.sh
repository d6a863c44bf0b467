#!/bin/bash
# Issue 14 finding 6: a build that cannot create the threads it wants (a
# task limit) waits for the ones it has, and never aborts. 60 independent
# file ops, --slots 64, the kiln process in a pids cgroup of 6, 10 and 16
# tasks: every build ends well with all 60 files (before: SIGABRT, exit
# 134, at every limit).
. "$(dirname "$0")/lib.sh"

# A pids cgroup of our own (v1, or v2 with the pids controller).
if [ -d /sys/fs/cgroup/pids ]; then
	CG=/sys/fs/cgroup/pids/kiln-task-limit-$$
elif grep -qw pids /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
	grep -qw pids /sys/fs/cgroup/cgroup.subtree_control ||
		echo +pids >/sys/fs/cgroup/cgroup.subtree_control || fail "cannot enable the pids controller"
	CG=/sys/fs/cgroup/kiln-task-limit-$$
else
	fail "no pids cgroup controller on this host (needed to limit tasks)"
fi
mkdir "$CG" || fail "cannot create $CG"
CLEANUP_HOOKS+=("rmdir $CG 2>/dev/null")

python3 - "$T/g.json" <<'PY'
import json, sys
ops = [{"id": f"f{i}", "op": "file", "actions": [{"action": "mkfile", "path": f"/f{i}", "data": str(i)}]}
       for i in range(60)]
ops.append({"id": "all", "op": "merge", "inputs": [f"f{i}" for i in range(60)]})
json.dump({"version": 1, "ops": ops, "output": "all"}, open(sys.argv[1], "w"))
PY
# Once without a limit: the runtime probe (a container) is cached then.
kbuild --def "$T/g.json" || fail "the build without a limit: $(tail -3 "$T/progress.json")"
for max in 6 10 16; do
	echo "$max" >"$CG/pids.max"
	rm -rf "$T/out"
	rc=0
	sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" \
		"$KILN" build --progress plain --slots 64 --no-cache --def "$T/g.json" \
		-o "type=local,dest=$T/out" >"$T/limit-$max.log" 2>&1 || rc=$?
	assert_eq "$rc" 0 "exit status under a limit of $max tasks ($(tail -2 "$T/limit-$max.log"))"
	assert_eq "$(ls "$T/out" | wc -l)" 60 "files built under a limit of $max tasks"
done
grep -q '^max [1-9]' "$CG/pids.events" 2>/dev/null ||
	[ ! -e "$CG/pids.events" ] || fail "the limit was never hit (test broken?): $(cat "$CG/pids.events")"
echo "ok: a build under a task limit waits for threads, never aborts"
