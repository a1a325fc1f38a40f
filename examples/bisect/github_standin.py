#!/usr/bin/env python3
"""A local stand-in for the GitHub REST API, for the bisect demo (not a mock of jetrun:
of GitHub, which cannot be reached from here). It answers what the github function
calls -- POST/GET /repos/{o}/{r}/issues/{n}/comments and POST
/repos/{o}/{r}/issues/comments/{id}/reactions -- and appends every request, as one JSON
line, to the file given as the second argument.

    python3 github_standin.py 127.0.0.1:9999 requests.jsonl [--fail-first]

--fail-first answers the first comment POST 502 and the second 403 with a secondary rate
limit and Retry-After: 1, as GitHub sometimes does.
"""
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port = sys.argv[1].rsplit(":", 1)
log_path = sys.argv[2]
fail_first = "--fail-first" in sys.argv
lock = threading.Lock()
comments = {}  # (repo, issue) -> [comment]
state = {"next_id": 1000, "comment_posts": 0}


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, code, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def record(self, body):
        with lock, open(log_path, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "body": body}) + "\n")

    def do_GET(self):
        self.record(None)
        m = re.match(r"^/repos/([^/]+/[^/]+)/issues/(\d+)/comments", self.path)
        if not m:
            return self.answer(404, {"message": "Not Found"})
        with lock:
            return self.answer(200, comments.get((m[1], m[2]), []))

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(n) or b"null")
        self.record(body)
        m = re.match(r"^/repos/([^/]+/[^/]+)/issues/(\d+)/comments$", self.path)
        if m:
            with lock:
                state["comment_posts"] += 1
                k = state["comment_posts"]
                if fail_first and k == 1:
                    return self.answer(502, {"message": "Bad Gateway"})
                if fail_first and k == 2:
                    return self.answer(403, {"message": "You have exceeded a secondary rate limit."}, {"Retry-After": "1"})
                state["next_id"] += 1
                c = {"id": state["next_id"], "body": body["body"]}
                comments.setdefault((m[1], m[2]), []).append(c)
            return self.answer(201, c)
        if re.match(r"^/repos/[^/]+/[^/]+/issues/comments/\d+/reactions$", self.path):
            return self.answer(201, {"id": 1, "content": body["content"]})
        return self.answer(404, {"message": "Not Found"})


ThreadingHTTPServer((host, int(port)), H).serve_forever()
