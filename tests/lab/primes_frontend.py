#!/usr/bin/env python3
"""GSP041 frontend: GET /<start> answers a 10x10 HTML table of start..start+99, primes green
and others red, computed by asking the VIP (10 requests in parallel).
Usage: primes_frontend.py VIP PORT"""
import concurrent.futures
import http.client
import http.server
import sys

VIP = sys.argv[1]


def ask(n: int) -> bool:
    c = http.client.HTTPConnection(VIP, 80, timeout=5)
    c.request("GET", f"/{n}")
    answer = c.getresponse().read().decode()
    c.close()
    return answer == "True"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        start = int(self.path.strip("/") or "1")
        numbers = list(range(start, start + 100))
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
            primes = list(pool.map(ask, numbers))
        rows = []
        for r in range(10):
            cells = "".join(
                f'<td bgcolor="{"green" if primes[r * 10 + c] else "red"}">{numbers[r * 10 + c]}</td>'
                for c in range(10)
            )
            rows.append(f"<tr>{cells}</tr>")
        body = ("<html><body><table>" + "".join(rows) + "</table></body></html>").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Handler).serve_forever()
