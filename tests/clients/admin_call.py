#!/usr/bin/env python3
"""One request to levee's admin API with Python's http.client; prints one JSON line:
{"status": int, "retry_after": str|null, "body": parsed JSON or text}.

  admin_call.py --port P [--cafile CA --server-name NAME] [--token T] METHOD PATH [BODY]

With --cafile the connection is HTTPS and the certificate is verified against CA for NAME.
BODY is sent as is with Content-Type: application/json. With --raw the answer's body is
left as bytes, "body_b64", and its headers are added: "headers" (names in lower case).
"""
import argparse
import base64
import http.client
import json
import socket
import ssl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile")
    ap.add_argument("--server-name", default="levee.test")
    ap.add_argument("--token")
    ap.add_argument("--content-type", default="application/json")
    ap.add_argument("--raw", action="store_true")
    ap.add_argument("method")
    ap.add_argument("path")
    ap.add_argument("body", nargs="?")
    args = ap.parse_args()

    conn = http.client.HTTPConnection(args.host, args.port, timeout=30)
    if args.cafile:
        ctx = ssl.create_default_context(cafile=args.cafile)
        raw = socket.create_connection((args.host, args.port), timeout=30)
        conn.sock = ctx.wrap_socket(raw, server_hostname=args.server_name)
    headers = {}
    if args.token is not None:
        headers["Authorization"] = "Bearer " + args.token
    body = None
    if args.body is not None:
        body = args.body.encode()
        headers["Content-Type"] = args.content_type
    conn.request(args.method, args.path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if args.raw:
        print(json.dumps({
            "status": resp.status,
            "headers": {name.lower(): value for name, value in resp.getheaders()},
            "body_b64": base64.b64encode(data).decode(),
        }))
        return
    text = data.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    print(json.dumps({
        "status": resp.status,
        "retry_after": resp.getheader("Retry-After"),
        "body": parsed,
    }))


if __name__ == "__main__":
    main()
