expect_content out abc
config '.config.Env' | grep -q SECRETISH && fail "ARG leaked into the image config"; true
