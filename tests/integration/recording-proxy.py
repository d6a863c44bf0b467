#!/usr/bin/env python3
"""A recording reverse proxy for tests: listens on 127.0.0.1 (a free port,
written to PORT_FILE), forwards every request to UPSTREAM (http://HOST:PORT)
and appends to LOG, per request: its method and path, its Authorization
header, and its body. usage: recording-proxy.py PORT_FILE UPSTREAM LOG"""
import http.client, http.server, sys, threading, urllib.parse

port_file, upstream, log_path = sys.argv[1:4]
up = urllib.parse.urlsplit(upstream)
lock = threading.Lock()
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate"}

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def relay(self):
        n = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(n) if n else b""
        with lock, open(log_path, "ab") as f:
            f.write(("%s %s\nauthorization: %s\n" % (self.command, self.path,
                     self.headers.get("Authorization", "none"))).encode())
            f.write(body + b"\n")
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=600)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Host"] = up.netloc
        conn.request(self.command, self.path, body=body if n else None, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        data = resp.read() if self.command != "HEAD" else b""
        length = resp.getheader("Content-Length")
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = relay

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
