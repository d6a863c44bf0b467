expect_content unpacked/inner/file.txt packed
expect_absent unpacked/data.bin
expect_content nodir/inner/file.txt packed
expect_content copied/fake.tar.gz "not a tar"
expect_stat gz/note.txt.gz %F "regular file"
assert_eq "$(gzip -dc "$ROOTFS/gz/note.txt.gz")" "just text" "gunzip of gz/note.txt.gz"
