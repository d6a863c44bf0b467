# The caches start as copies of the seed stage's /s and of its whole tree
# (a fresh state root: neither cache existed before).
expect_content out "seeded
deep"
expect_content list "f
sub"
expect_content out2 seeded
expect_absent c/f
expect_absent whole/s
