expect_content out "[set][]"
