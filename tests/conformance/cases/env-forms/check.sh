expect_content out "1|two words|3 4"
config '.config.Env' | grep -q '"B=two words"' || fail "Env lacks B"
