expect_content head/a.txt "first"
expect_content head/b.txt "second"
expect_content head/sub/s.txt "inner"
expect_stat head/run.sh %a 755
expect_stat head/a.txt %a 644
expect_stat head/a.txt %Y 0
expect_absent head/.git
expect_content tag/a.txt "first"
expect_absent tag/b.txt
expect_absent tag/.git
expect_content sub/s.txt "inner"
expect_absent sub/a.txt
expect_absent sub/.git
expect_content keep/b.txt "second"
expect_exists keep/.git/HEAD
expect_exists keep/.git/shallow
assert_eq "$(git --git-dir="$ROOTFS/keep/.git" log --format=%s HEAD)" "two" "git log of keep/"
assert_eq "$(git --git-dir="$ROOTFS/keep/.git" config remote.origin.url)" "$GIT/repo.git" "origin of keep/"
