"""A FAKE of the one GitHub API call Argo CD Notifications makes for ml-service: `POST
/repos/<owner>/<name>/dispatches` (repository_dispatch). The GitHub API cannot be reached from here.

    python fake_github.py --port PORT --token-file FILE --log FILE

Listens on 127.0.0.1 (the cluster tier runs it inside the node's network namespace, beside the
notifications controller). A request with `Authorization: Bearer <the token in FILE>` and a JSON
body gets 204 and is appended to the log as one JSON line `{"path", "body"}`; a wrong or missing
token gets 401, any other call 404: the controller's configuration is checked, not trusted.
"""

from __future__ import annotations

import argparse
import hmac
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DISPATCHES = re.compile(r"^/repos/[^/]+/[^/]+/dispatches$")
MAX_BODY = 64 * 1024


def handler(token: str, log: Path):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if not DISPATCHES.match(self.path):
                return self._answer(404)
            sent = self.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return self._answer(401)
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                return self._answer(400)
            with log.open("a") as fh:
                fh.write(json.dumps({"path": self.path, "body": body}) + "\n")
            return self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # the log file is the record
            pass

    return Handler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), handler(a.token_file.read_text(), a.log))
    server.serve_forever()


if __name__ == "__main__":
    main()
