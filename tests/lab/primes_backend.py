#!/usr/bin/env python3
"""GSP041 backend: GET /<n> answers True or False (is n prime), with the backend's name in a
header. Usage: primes_backend.py NAME PORT [broken]

With `broken` the backend answers False to every number (a faulty build): the health check
`GET /2` expecting True takes it out of rotation."""
import http.server
import sys

NAME = sys.argv[1]
BROKEN = len(sys.argv) > 3 and sys.argv[3] == "broken"


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        try:
            n = int(self.path.strip("/"))
            prime = is_prime(n) and not BROKEN
            body, code = ("True" if prime else "False").encode(), 200
        except ValueError:
            body, code = b"not a number", 400
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", NAME)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Handler).serve_forever()
