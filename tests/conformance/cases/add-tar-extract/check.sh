expect_content unpacked/inner/file.txt packed
expect_absent unpacked/bundle.tar.gz
