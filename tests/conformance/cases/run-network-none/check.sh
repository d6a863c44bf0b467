expect_content out lo
expect_content netfiles present
expect_absent etc/hosts
expect_absent etc/resolv.conf
