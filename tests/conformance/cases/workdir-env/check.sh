expect_content out /data/sub
