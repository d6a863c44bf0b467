#!/usr/bin/env python3
"""A tiny Docker registry token server for tests (registry-lib.sh).

  registry-token-server.py --key KEY.pem --cert CERT.pem --issuer ISS
      --service SVC --user USER:PASS --port-file FILE [--log FILE]

GET /token?service=SVC&scope=repository:NAME:ACTIONS&scope=...
  - with HTTP basic credentials matching --user: every requested action;
  - with other credentials: 401 {"details": "invalid username or password"};
  - anonymous: "pull" on repositories under "public/" only.
Answers {"token": JWT, "access_token": JWT, "expires_in": 300}; the JWT is
RS256-signed with KEY by the openssl CLI and carries CERT in "x5c", which the
registry verifies against its rootcertbundle. Only the standard library.
Binds 127.0.0.1 on a free port and writes the port to --port-file.
"""
import argparse
import base64
import http.server
import json
import os
import subprocess
import sys
import time
import urllib.parse


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der(path):
    pem = open(path).read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END")[0]
    return base64.b64decode("".join(body.split()))


def sign(key, data):
    p = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                       input=data, capture_output=True, check=True)
    return p.stdout


def parse_scope(s):
    # repository:NAME:ACTIONS (NAME may contain ':' only for a port; not here)
    parts = s.split(":")
    if len(parts) < 3:
        return None
    return {"type": parts[0], "name": ":".join(parts[1:-1]),
            "actions": [a for a in parts[-1].split(",") if a]}


class Handler(http.server.BaseHTTPRequestHandler):
    cfg = None

    def log_message(self, fmt, *args):
        if self.cfg.log:
            with open(self.cfg.log, "a") as f:
                f.write("%s\n" % (fmt % args))

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def who(self):
        h = self.headers.get("Authorization")
        if not h:
            return "", True
        if not h.startswith("Basic "):
            return None, False
        try:
            user, _, pw = base64.b64decode(h[6:]).decode().partition(":")
        except Exception:
            return None, False
        want_user, _, want_pw = self.cfg.user.partition(":")
        return user, (user == want_user and pw == want_pw)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path != "/token":
            return self.reply(404, {"details": "not found"})
        q = urllib.parse.parse_qs(url.query)
        user, ok = self.who()
        if not ok:
            return self.reply(401, {"details": "invalid username or password"})
        access = []
        for s in q.get("scope", []):
            sc = parse_scope(s)
            if not sc:
                continue
            if not user:
                if not sc["name"].startswith("public/"):
                    continue
                sc["actions"] = [a for a in sc["actions"] if a == "pull"]
            access.append(sc)
        now = int(time.time())
        claims = {"iss": self.cfg.issuer, "sub": user or "anonymous",
                  "aud": q.get("service", [self.cfg.service])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": b64url(os.urandom(12)), "access": access}
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cfg.der).decode()]}
        signing = (b64url(json.dumps(header).encode()) + "." +
                   b64url(json.dumps(claims).encode()))
        tok = signing + "." + b64url(sign(self.cfg.key, signing.encode()))
        self.reply(200, {"token": tok, "access_token": tok, "expires_in": 300})


def main():
    ap = argparse.ArgumentParser()
    for a in ("key", "cert", "issuer", "service", "user", "port-file"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--log")
    cfg = ap.parse_args()
    cfg.der = cert_der(cfg.cert)
    Handler.cfg = cfg
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = cfg.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, cfg.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
