expect_content out s3cret
expect_absent run/secrets/tok
