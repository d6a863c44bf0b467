expect_content out "fell back"
