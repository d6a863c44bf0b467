# BuildKit: copy.MkdirAll(dest, 0755, chown, tm) for the destination
# (solver/llbsolver/file/unpack.go), the --chown owner on every archive
# entry (mapArchiveHeaderOwner in unpack_root.go), the header's mode.
expect_stat opt "%u:%g %a" "1000:1001 755"
expect_stat opt/app "%u:%g %a" "1000:1001 755"
expect_content opt/app/README readme
expect_stat opt/app/README "%u:%g %a" "1000:1001 644"
expect_stat opt/app/lib "%u:%g %a" "1000:1001 755"
expect_stat opt/app/lib/run.sh "%u:%g %a" "1000:1001 755"
expect_stat opt/app/lib/deep "%u:%g %a" "1000:1001 750"
expect_content opt/app/lib/deep/key secret
expect_stat opt/app/lib/deep/key "%u:%g %a" "1000:1001 600"
expect_absent opt/app/bundle.tar
expect_stat tmp "%u:%g %a" "0:0 1777"
expect_content tmp/README readme
expect_stat tmp/README "%u:%g %a" "1002:1003 644"
expect_stat tmp/lib "%u:%g %a" "1002:1003 755"
expect_stat tmp/lib/deep "%u:%g %a" "1002:1003 750"
expect_stat tmp/lib/deep/key "%u:%g %a" "1002:1003 600"
expect_stat tmp/lib/run.sh "%u:%g %a" "1002:1003 755"
# Directories the archive only implies: root, 0755 (unpack_root.go).
expect_stat srv "%u:%g %a" "1000:1001 755"
expect_stat srv/pkg "%u:%g %a" "0:0 755"
expect_stat srv/pkg/bin "%u:%g %a" "0:0 755"
expect_content srv/pkg/bin/tool tool
expect_stat srv/pkg/bin/tool "%u:%g %a" "1000:1001 755"
