expect_content tmp/who builder
