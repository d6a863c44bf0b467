#!/bin/sh
# Regenerates the committed fixtures of this case (not used by the build).
set -e
cd "$(dirname "$0")"
t=$(mktemp -d)
mkdir -p "$t/inner" && printf 'packed\n' >"$t/inner/file.txt"
tar -C "$t" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - inner | gzip -n >data.bin
rm -rf "$t"
printf 'not a tar\n' >fake.tar.gz
printf 'just text\n' | gzip -n >note.txt.gz
