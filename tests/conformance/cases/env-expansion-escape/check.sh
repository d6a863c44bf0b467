expect_content out '$HOME $A'
