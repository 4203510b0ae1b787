#!/usr/bin/env python3
"""A local action target for trying hookwarden: answers 200 to every request and prints
its method, path, Idempotency-Key and body, one line each. It also stands in for an account
service that lookups ask: GET /accounts/ID answers that account as JSON, 12 days old.
Usage: sink.py [port]"""
import http.server
import json
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
        if self.path.startswith("/accounts/"):
            # The lookup deploy/rules.toml's [enrich.account] makes.
            account = self.path[len("/accounts/"):]
            print(f"lookup received: GET {self.path}", flush=True)
            body = json.dumps({"id": account, "age_days": 12, "payout_pending": False}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # A readiness check (run-local waits for it before sending); not an action.
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8089
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
