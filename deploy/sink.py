#!/usr/bin/env python3
"""A local action target for trying hookwarden: answers 200 to every request and prints
its method, path, Idempotency-Key and body, one line each. Usage: sink.py [port]"""
import http.server
import sys


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        print(f"action received: {self.command} {self.path} "
              f"idempotency-key={self.headers.get('Idempotency-Key')} body={body}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def do_GET(self):
        # A readiness check (run-local waits for it before sending); not an action.
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8089
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
