#!/usr/bin/env python3
"""A stand-in for the Anthropic API, for the example agent's smoke test (tests and the
emulated-hypervisor harness): HTTPS with a test certificate, `POST /v1/messages` answered with a
well-formed Messages API response when the request carries the expected key, 401 otherwise.
Every request's key is appended to the log file (one line: the key, or `-` when absent) so the
test can check that the real key arrived and the guest's placeholder did not.

usage: fake_anthropic.py --cert CERT --key KEY --expect-key KEY --log FILE [--port N]
Prints `listening PORT` once it accepts connections.
"""
import argparse
import http.server
import json
import ssl
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--expect-key", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            key = self.headers.get("x-api-key") or "-"
            with open(a.log, "a") as f:
                f.write(key + "\n")
            if self.path.split("?")[0] != "/v1/messages":
                return self.answer(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
            if key != a.expect_key:
                return self.answer(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
            request = json.loads(body or b"{}")
            self.answer(200, {
                "id": "msg_fake_0001",
                "type": "message",
                "role": "assistant",
                "model": request.get("model", "claude-fake"),
                "content": [{"type": "text", "text": "Hello from the fake API, to the bottle."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 9},
            })

        def answer(self, status, doc):
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", "req_fake_0001")
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("0.0.0.0", a.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
