expect_content f x
[ "$(ls "$ROOTFS")" = f ] || fail "scratch image holds more than /f"
