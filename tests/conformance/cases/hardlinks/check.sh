# One inode per group in the exported root file system.
ino() { stat -c %i "$ROOTFS/$1"; }
assert_eq "$(ino out/sub/b)" "$(ino out/a)" "out/sub/b is a link of out/a"
assert_eq "$(stat -c %h "$ROOTFS/out/a")" 2 "links of out/a"
[ "$(ino out/c)" != "$(ino out/a)" ] || fail "out/c must be its own file"
assert_eq "$(ino extracted/y)" "$(ino extracted/x)" "extracted/y is a link of x"
assert_eq "$(ino extracted/d/z)" "$(ino extracted/x)" "extracted/d/z is a link of x"
assert_eq "$(stat -c %h "$ROOTFS/extracted/x")" 3 "links of extracted/x"
[ "$(ino extracted/w)" != "$(ino extracted/x)" ] || fail "extracted/w must be its own file"
expect_content seen linked
assert_eq "$(ino seen2)" "$(ino seen)" "seen2 is a link of seen"

# The image layers carry each group's content once: the first member in
# path order holds it and the others are tar hardlink entries (typeflag 1)
# naming it, as containerd's tar writer in BuildKit does (d/z before x).
img="$T/check-img"
rm -rf "$img" && mkdir -p "$img" && tar -xf "$out/image.tar" -C "$img"
top=$(jq -r '.manifests[0].digest' "$img/index.json")
man=$(jq -r '[.manifests[] | select(.platform.architecture == "amd64")][0].digest' "$img/blobs/sha256/${top#sha256:}")
listing=$(for l in $(jq -r '.layers[].digest' "$img/blobs/sha256/${man#sha256:}"); do
	tar -tvzf "$img/blobs/sha256/${l#sha256:}"
done)
for want in "out/sub/b link to out/a" "extracted/x link to extracted/d/z" \
	"extracted/y link to extracted/d/z" "seen2 link to seen"; do
	grep -qF -- "$want" <<<"$listing" || fail "no hardlink entry '$want' in the layers: $listing"
done
grep -q "extracted/w link to" <<<"$listing" && fail "extracted/w is not a link"
rm -rf "$img"
