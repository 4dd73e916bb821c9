"""
A backend for docs/traffic-control/record-caps.sh: answers every GET with
a status and a name, after a delay.

    python3 backend.py PORT DELAY STATUS NAME
"""

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, delay, status, name = (
    int(sys.argv[1]),
    float(sys.argv[2]),
    int(sys.argv[3]),
    sys.argv[4].encode(),
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)

    def log_message(self, format: str, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
