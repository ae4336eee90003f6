#!/usr/bin/env python3
"""Wait in IMAP IDLE for new mail, then fetch it, on one connection (standard library only).

Used by levee's end-to-end tests as an IDLE client. Logs in (implicit TLS with --ssl, else
STARTTLS), selects INBOX, notes UIDVALIDITY and EXISTS, enters IDLE and prints "IDLING" on its
own line. When the server reports a larger EXISTS it sends DONE, fetches the newest message
and prints ONE JSON line:

  {"ok": true, "uidvalidity": n, "exists_before": n, "exists_after": n,
   "body_b64": "...", "untagged": [...every untagged line seen during IDLE...]}

On failure: {"ok": false, "stage": "...", "error": "..."} and exit 1. The password is never
printed.
"""

import argparse
import base64
import imaplib
import json
import re
import ssl
import sys


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--ssl", action="store_true")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    stage = "connect"
    try:
        if args.ssl:
            imap = imaplib.IMAP4_SSL(args.host, args.port, ssl_context=tls_context(),
                                     timeout=args.timeout)
        else:
            imap = imaplib.IMAP4(args.host, args.port, timeout=args.timeout)
            imap.starttls(ssl_context=tls_context())
        stage = "auth"
        imap.login(args.user, args.password)
        stage = "select"
        typ, data = imap.select("INBOX")
        before = int(data[0])
        uidvalidity = int(imap.untagged_responses.get("UIDVALIDITY", [b"0"])[-1])
        stage = "idle"
        tag = imap._new_tag()
        imap.send(tag + b" IDLE\r\n")
        line = imap.readline()
        if not line.startswith(b"+"):
            raise RuntimeError("no continuation for IDLE: %r" % line)
        print("IDLING", flush=True)
        untagged = []
        after = before
        while after <= before:
            line = imap.readline()
            if not line:
                raise RuntimeError("connection closed during IDLE")
            untagged.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line.startswith(b"* BYE") or line.startswith(b"* NO") or line.startswith(b"* BAD"):
                raise RuntimeError("server said %r during IDLE" % line)
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                after = int(m.group(1))
        imap.send(b"DONE\r\n")
        while True:
            line = imap.readline()
            if line.startswith(tag):
                if b" OK" not in line:
                    raise RuntimeError("IDLE ended with %r" % line)
                break
            untagged.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        stage = "fetch"
        typ, data = imap.fetch(str(after), "(BODY.PEEK[])")
        body = data[0][1]
        imap.logout()
        print(json.dumps({"ok": True, "uidvalidity": uidvalidity, "exists_before": before,
                          "exists_after": after, "untagged": untagged,
                          "body_b64": base64.b64encode(body).decode()}))
        return 0
    except Exception as e:  # noqa: BLE001 - reported to the test as JSON
        print(json.dumps({"ok": False, "stage": stage, "error": str(e)}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
