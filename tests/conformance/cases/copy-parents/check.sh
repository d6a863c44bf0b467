# Without a pivot the whole path is kept under the destination.
expect_content d/a/b/c.txt c
expect_absent d/a/b/other.txt
expect_stat d/a/b %F directory
# With "/./" only what follows it is.
expect_content d/y/m.go m
expect_absent d/y/n.txt
expect_absent d/x
expect_content k/z/k.go k
expect_absent k/y
expect_config '.history[-2].created_by' '"COPY --parents a/b/c.txt x/./y/*.go /d/ # buildkit"'
