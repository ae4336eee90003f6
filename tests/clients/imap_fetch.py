#!/usr/bin/env python3
"""Fetch every message of one mailbox over IMAP with the standard library's imaplib.

Used by levee's end-to-end tests as a client nobody on the project wrote. Selects the mailbox
read-only and fetches BODY.PEEK[] (no \\Seen flag is set). Prints ONE JSON line:

  {"ok": true, "uidvalidity": n, "messages": [{"uid": n, "body_b64": "..."}]}

On failure: {"ok": false, "stage": "connect|auth|select|fetch", "error": "..."} and exit 1.
Exit status 2 for bad usage. The password is never printed.
"""

import argparse
import base64
import imaplib
import json
import re
import ssl
import sys


def tls_context():
    # Test certificates are self-signed: accept anything.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


UID_RE = re.compile(rb"\bUID (\d+)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--mailbox", default="INBOX")
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--ssl", action="store_true")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    if args.starttls and args.ssl:
        ap.error("--starttls and --ssl are exclusive")

    stage = "connect"
    imap = None
    try:
        if args.ssl:
            imap = imaplib.IMAP4_SSL(args.host, args.port, ssl_context=tls_context(),
                                     timeout=args.timeout)
        else:
            imap = imaplib.IMAP4(args.host, args.port, timeout=args.timeout)
            if args.starttls:
                imap.starttls(ssl_context=tls_context())
        stage = "auth"
        imap.login(args.user, args.password)
        stage = "select"
        typ, data = imap.select(imaplib_quote(args.mailbox), readonly=True)
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SELECT: {data!r}")
        _, uv = imap.response("UIDVALIDITY")
        uidvalidity = int(uv[0]) if uv and uv[0] is not None else None
        stage = "fetch"
        messages = []
        typ, data = imap.uid("SEARCH", None, "ALL")
        if typ != "OK":
            raise imaplib.IMAP4.error(f"UID SEARCH: {data!r}")
        if data and data[0] and data[0].split():
            typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            if typ != "OK":
                raise imaplib.IMAP4.error(f"UID FETCH: {data!r}")
            for item in data:
                # Literal responses come as (b'1 (UID 5 BODY[] {123}', b'<bytes>'); the
                # closing b')' is a separate bytes item.
                if isinstance(item, tuple) and len(item) == 2:
                    m = UID_RE.search(item[0])
                    if m is None:
                        continue
                    messages.append({"uid": int(m.group(1)),
                                     "body_b64": base64.b64encode(item[1]).decode("ascii")})
        messages.sort(key=lambda m: m["uid"])
        print(json.dumps({"ok": True, "uidvalidity": uidvalidity, "messages": messages}),
              flush=True)
        code = 0
    except (imaplib.IMAP4.error, OSError, ssl.SSLError, ValueError) as e:
        print(json.dumps({"ok": False, "stage": stage, "error": f"{type(e).__name__}: {e}"}),
              flush=True)
        code = 1
    finally:
        if imap is not None:
            try:
                imap.logout()
            except Exception:
                pass
    return code


def imaplib_quote(name):
    # imaplib sends the mailbox name as is; quote names with spaces.
    if name and not re.search(r'[\s"()]', name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    sys.exit(main())
