# Patterns are relative to the copied source; "!" brings a file back.
expect_content s/a.txt a
expect_absent s/b.log
expect_content s/keep.log k
expect_absent s/tmp
expect_content s/sub/c.log c
# Wildcard matches are excluded by their own path.
expect_content h/home.md 3
expect_absent h/hom.txt
expect_absent h/homework.txt
# ADD too; "**" reaches below.
expect_content a/a.txt a
expect_content a/b.log b
expect_absent a/sub/c.log
expect_stat a/sub %F directory
# BuildKit's history leaves --exclude out.
expect_config '.history[-1].created_by' '"ADD src /a/ # buildkit"'
