# BuildKit: fsutil copy.Copy creates missing parents with MkdirAll(dir,
# --chmod mode or 0755, chown, utime), which chowns only what it creates
# (fsutil 183e7fb, "copy: fix custom chmod for parent directories").
expect_stat a "%u:%g %a" "1000:1001 640"
expect_stat a/b "%u:%g %a" "1000:1001 640"
expect_stat a/b/c "%u:%g %a" "1000:1001 640"
expect_content a/b/c/f f
expect_stat a/b/c/f "%u:%g %a" "1000:1001 640"
expect_stat home "%u:%g %a" "0:0 755"
expect_stat home/x "%u:%g %a" "1002:1003 755"
expect_stat home/x/y "%u:%g %a" "1002:1003 755"
expect_stat home/x/y/sub "%u:%g %a" "1002:1003 755"
expect_content home/x/y/sub/g g
expect_stat home/x/y/sub/g "%u:%g %a" "1002:1003 644"
expect_stat home/builder "%u:%g %a" "0:0 755"
expect_stat home/builder/n "%u:%g %a" "1004:1005 755"
expect_stat home/builder/n/f2 "%u:%g %a" "1004:1005 644"
