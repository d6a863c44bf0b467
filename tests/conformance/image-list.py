#!/usr/bin/env python3
"""What a build added to its base image, per platform, as text to diff.

    image-list.py ARCHIVE BASE-LAYOUT OUTDIR [NAME=VALUE...]

ARCHIVE is the OCI archive of `kiln build -o type=oci` (an index of one
or more images, or one image); BASE-LAYOUT the OCI layout of the base
image every case builds on (the busybox fixture). For each image, named
by its platform (linux_amd64, linux_arm64, ...), writes:

  OUTDIR/files.PLATFORM   the built layers' file list (format below)
  OUTDIR/config.PLATFORM  the image config, normalized (one line: run.sh
                          pretty-prints it with jq -S)

and prints the platform names, one a line, in the index's order. Each
NAME=VALUE says that VALUE (a server's URL with its port, a path on this
machine) differs from run to run: it is written as ${NAME} wherever it
appears in both outputs, longest VALUE first; a file whose content holds
it is hashed with it so replaced (its size stays the real one), and the
diff_id of a layer that holds it is "<layer N holds ${NAME}>".

Built layers are those after the base's: when the base image's diff_ids
(same os and architecture) begin the image's rootfs.diff_ids, those
layers are the base's; the rest (all of them for FROM scratch) are
applied in order, whiteouts applied, into one view. One line per entry,
sorted by path:

  PATH TYPE UID:GID MODE [size=N sha256=HEX] [target=T] [dev=MAJ,MIN]
       [hardlink=FIRST] [xattr.NAME=VALUE ...] mtime=SEC

TYPE is file, dir, symlink, char, block or fifo. MODE is octal with
setuid/setgid/sticky. `PATH whiteout mtime=SEC` says the built layers
hide PATH of a lower layer (a `.wh.NAME` entry), `PATH opaque mtime=SEC`
that they hide what lower layers hold below directory PATH
(`.wh..wh..opq`); an entry a later layer puts at PATH replaces the line.
A hardlink group (tar LNKTYPE entries and the entry they name) is
printed canonically: every member with the group's metadata, and every
member but the first in path order with hardlink=FIRST; a link to an
entry the built layers do not hold is `PATH hardlink-to TARGET`. PATH
and the values are printed as they are unless they hold a space, a
control character, `=` or a backslash: then as a JSON string. mtime is
the entry's mtime as written (with SOURCE_DATE_EPOCH, kiln clamps new
layers' times to it), with its fraction when it has one.

The config: os, architecture and variant are checked against the index's
platform for the image and then left out (so both platforms can share one
golden); the base layers' rootfs.diff_ids become "<base layer N>"; the
rest is kept as it is.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def fail(msg):
    sys.stderr.write("image-list.py: %s\n" % msg)
    sys.exit(1)


class Layout:
    """An OCI layout: a directory, or an archive of one."""

    def __init__(self, path):
        self.dir = path if os.path.isdir(path) else None
        self.tar = None if self.dir else tarfile.open(path, "r:")

    def read(self, name):
        if self.dir:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read()
        f = None
        for n in (name, "./" + name):
            try:
                f = self.tar.extractfile(n)
                break
            except KeyError:
                pass
        if f is None:
            fail("%s: no %s" % (self.tar.name, name))
        return f.read()

    def blob(self, digest):
        algo, _, hexd = digest.partition(":")
        return self.read("blobs/%s/%s" % (algo, hexd))

    def json(self, digest):
        return json.loads(self.blob(digest))


def platform_name(p):
    parts = [p.get("os", "?"), p.get("architecture", "?")]
    if p.get("variant"):
        parts.append(p["variant"])
    return "_".join(parts)


def images(layout):
    """[(platform dict or None, manifest)] reachable from index.json."""
    out = []

    def walk(desc):
        doc = layout.json(desc["digest"])
        if "manifests" in doc:
            for d in doc["manifests"]:
                # Attestations and the like are not images of a platform.
                if d.get("platform", {}).get("os") == "unknown":
                    continue
                walk(d)
        elif "layers" in doc:
            out.append((desc.get("platform"), doc))

    for d in json.loads(layout.read("index.json"))["manifests"]:
        walk(d)
    return out


def base_diff_ids(base):
    """{(os, architecture): diff_ids} of the base layout's images (the
    fixture's arm64 image says variant v8, an image built for linux/arm64
    may say none)."""
    out = {}
    for plat, man in images(base):
        cfg = base.json(man["config"]["digest"])
        p = plat or cfg
        out[(p.get("os"), p.get("architecture"))] = cfg["rootfs"]["diff_ids"]
    return out


def layer_tar(data, media_type):
    if media_type.endswith("zstd"):
        data = subprocess.run(["zstd", "-dcq"], input=data, stdout=subprocess.PIPE,
                              check=True).stdout
    elif media_type.endswith("gzip"):
        data = gzip.decompress(data)
    elif not media_type.endswith(".tar"):
        fail("layer media type %s is not a tar" % media_type)
    return data


def text(s):
    if any(c in s for c in " =\\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        return json.dumps(s, ensure_ascii=False)
    return s


def norm(path):
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


class Group:
    """A hardlink group: the entries that share one (the identity matters)."""


def entry_fields(m, data, volatile):
    if m.isreg():
        t = "file"
    elif m.isdir():
        t = "dir"
    elif m.issym():
        t = "symlink"
    elif m.ischr():
        t = "char"
    elif m.isblk():
        t = "block"
    elif m.isfifo():
        t = "fifo"
    else:
        t = "type-%s" % m.type.decode("ascii", "replace")
    f = [t, "%d:%d" % (m.uid, m.gid), "%04o" % m.mode]
    if t == "file":
        f += ["size=%d" % m.size, "sha256=" + hashlib.sha256(volatile(data)).hexdigest()]
    if t == "symlink":
        f.append("target=" + text(m.linkname))
    if t in ("char", "block"):
        f.append("dev=%d,%d" % (m.devmajor, m.devminor))
    f += ["xattr.%s=%s" % (text(k[len("SCHILY.xattr."):]), text(v))
          for k, v in sorted(m.pax_headers.items()) if k.startswith("SCHILY.xattr.")]
    return f


def mtime_text(m):
    raw = m.pax_headers.get("mtime")
    if raw is not None and "." in raw and raw.split(".", 1)[1].strip("0"):
        return raw
    return "%d" % int(m.mtime)


def apply_layers(layers, volatile):
    """The merged view of tar layers: {path: (fields, mtime, group)}."""
    view = {}

    def drop_below(path):
        pre = path.rstrip("/") + "/"
        for p in [p for p in view if p.startswith(pre)]:
            del view[p]

    def drop(path):
        view.pop(path, None)
        drop_below(path)

    for data in layers:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
            for m in t:
                path = norm(m.name)
                d, base = os.path.split(path)
                if base == ".wh..wh..opq":
                    drop_below(d)
                    view[norm(d + "/.wh..wh..opq")] = (["opaque"], mtime_text(m), None)
                    continue
                if base.startswith(".wh."):
                    hidden = norm(os.path.join(d, base[4:]))
                    drop(hidden)
                    view[hidden] = (["whiteout"], mtime_text(m), None)
                    continue
                if path == "/":
                    continue
                if m.islnk():
                    prev = view.get(norm(m.linkname))
                    drop(path)
                    if prev and prev[2] is not None:
                        view[path] = prev
                    else:
                        view[path] = (["hardlink-to", text(norm(m.linkname))], mtime_text(m), None)
                    continue
                body = t.extractfile(m).read() if m.isreg() else b""
                # A directory over a directory keeps what is below it.
                if not m.isdir() or view.get(path, ([""],))[0][0] != "dir":
                    drop(path)
                view[path] = (entry_fields(m, body, volatile), mtime_text(m),
                              None if m.isdir() else Group())
    return view


def file_list(view):
    first, count = {}, {}
    for path in sorted(view):
        g = view[path][2]
        if g is not None:
            first.setdefault(id(g), path)
            count[id(g)] = count.get(id(g), 0) + 1
    lines = []
    for path in sorted(view):
        fields, mtime, g = view[path]
        shown = path[:-len("/.wh..wh..opq")] if fields[0] == "opaque" else path
        f = [text(shown)] + fields
        if g is not None and count[id(g)] > 1 and first[id(g)] != path:
            f.append("hardlink=" + text(first[id(g)]))
        f.append("mtime=" + mtime)
        lines.append(" ".join(f) + "\n")
    return "".join(lines)


def main():
    if len(sys.argv) < 4:
        fail("usage: image-list.py ARCHIVE BASE-LAYOUT OUTDIR [NAME=VALUE...]")
    archive, base_path, outdir = sys.argv[1:4]
    subst = []
    for a in sys.argv[4:]:
        name, eq, value = a.partition("=")
        if not eq or not name:
            fail("%s: want NAME=VALUE" % a)
        if value:
            subst.append((value, "${%s}" % name))
    subst.sort(key=lambda p: -len(p[0]))

    def volatile(text):
        for value, name in subst:
            text = text.replace(value, name)
        return text

    def volatile_bytes(data):
        for value, name in subst:
            data = data.replace(value.encode(), name.encode())
        return data

    def volatile_names(data):
        return [name for value, name in subst if value.encode() in data]

    img = Layout(archive)
    bases = base_diff_ids(Layout(base_path))
    os.makedirs(outdir, exist_ok=True)
    seen = set()
    for plat, man in images(img):
        cfg = img.json(man["config"]["digest"])
        cfg_plat = {k: cfg[k] for k in ("os", "architecture", "variant") if k in cfg}
        name = platform_name(plat or cfg_plat)
        if plat is not None and name != platform_name(cfg_plat):
            fail("%s: the config says %s" % (name, platform_name(cfg_plat)))
        if name in seen:
            fail("two images for %s" % name)
        seen.add(name)
        diff_ids = cfg["rootfs"]["diff_ids"]
        if len(diff_ids) != len(man["layers"]):
            fail("%s: %d diff_ids for %d layers" % (name, len(diff_ids), len(man["layers"])))
        base = bases.get((cfg_plat.get("os"), cfg_plat.get("architecture")), [])
        nbase = len(base) if diff_ids[:len(base)] == base else 0
        layers = []
        shown_ids = ["<base layer %d>" % i for i in range(nbase)]
        for i, desc in enumerate(man["layers"][nbase:], nbase):
            data = layer_tar(img.blob(desc["digest"]), desc["mediaType"])
            if "sha256:" + hashlib.sha256(data).hexdigest() != diff_ids[i]:
                fail("%s: layer %d does not match diff_id %s" % (name, i, diff_ids[i]))
            layers.append(data)
            held = volatile_names(data)
            shown_ids.append("<layer %d holds %s>" % (i, " ".join(held)) if held else diff_ids[i])
        with open(os.path.join(outdir, "files." + name), "w") as f:
            f.write(volatile(file_list(apply_layers(layers, volatile_bytes))))
        for k in ("os", "architecture", "variant"):
            cfg.pop(k, None)
        cfg["rootfs"]["diff_ids"] = shown_ids
        with open(os.path.join(outdir, "config." + name), "w") as f:
            f.write(volatile(json.dumps(cfg, ensure_ascii=False)))
        print(name)


if __name__ == "__main__":
    main()
