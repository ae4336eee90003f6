#!/usr/bin/env python3
"""Send one raw RFC 5322 message over SMTP with the standard library's smtplib.

Used by levee's end-to-end tests as a client nobody on the project wrote. The message file is
sent byte-exact (smtplib only dot-stuffs bytes and adds the final CRLF "." CRLF). Prints ONE
JSON line and exits 0 even when the server refuses, so tests can assert on codes:

  {"ok": bool, "code": int, "reply": str, "stage": "connect|starttls|auth|mail|rcpt|data",
   "refused": {"rcpt": [code, "msg"]}}

"stage" is the last stage attempted (the failing one when ok is false). code 0 means no SMTP
reply (network error, disconnect, missing extension); "reply" then holds the error text.
Exit status 2 only for bad usage. The password is never printed.
"""

import argparse
import json
import smtplib
import socket
import ssl
import sys


def tls_context():
    # Test certificates are self-signed: accept anything.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def text(msg):
    if isinstance(msg, bytes):
        return msg.decode("utf-8", "replace")
    return str(msg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--starttls", action="store_true", help="STARTTLS after EHLO")
    ap.add_argument("--ssl", action="store_true", help="implicit TLS from the first byte")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--from", dest="sender", required=True)
    ap.add_argument("--to", dest="rcpts", action="append", required=True)
    ap.add_argument("--message", required=True, help="file with the raw message bytes")
    ap.add_argument("--helo", default="client.test")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    if args.starttls and args.ssl:
        ap.error("--starttls and --ssl are exclusive")
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")
    try:
        with open(args.message, "rb") as f:
            body = f.read()
    except OSError as e:
        ap.error(f"cannot read --message: {e}")

    result = {"ok": False, "code": 0, "reply": "", "stage": "connect", "refused": {}}

    def reply(code, msg):
        result["code"] = int(code)
        result["reply"] = text(msg)

    smtp = None
    try:
        if args.ssl:
            smtp = smtplib.SMTP_SSL(args.host, args.port, local_hostname=args.helo,
                                    timeout=args.timeout, context=tls_context())
        else:
            smtp = smtplib.SMTP(args.host, args.port, local_hostname=args.helo,
                                timeout=args.timeout)
        code, msg = smtp.ehlo()
        reply(code, msg)
        if code != 250:
            code, msg = smtp.helo()
            reply(code, msg)
            if code != 250:
                raise smtplib.SMTPResponseException(code, msg)

        if args.starttls:
            result["stage"] = "starttls"
            code, msg = smtp.starttls(context=tls_context())
            reply(code, msg)
            smtp.ehlo()

        if args.user is not None:
            result["stage"] = "auth"
            code, msg = smtp.login(args.user, args.password)
            reply(code, msg)

        result["stage"] = "mail"
        options = []
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(body)}")
        code, msg = smtp.mail(args.sender, options)
        reply(code, msg)
        if code != 250:
            raise smtplib.SMTPResponseException(code, msg)

        result["stage"] = "rcpt"
        accepted = 0
        for rcpt in args.rcpts:
            code, msg = smtp.rcpt(rcpt)
            reply(code, msg)
            if code in (250, 251):
                accepted += 1
            else:
                result["refused"][rcpt] = [code, text(msg)]
        if accepted == 0:
            raise smtplib.SMTPResponseException(code, msg)

        result["stage"] = "data"
        code, msg = smtp.data(body)
        reply(code, msg)
        result["ok"] = code == 250
    except smtplib.SMTPResponseException as e:
        # Includes SMTPAuthenticationError (535) and SMTPConnectError (bad greeting).
        reply(e.smtp_code, e.smtp_error)
    except (smtplib.SMTPException, OSError, socket.timeout, ssl.SSLError) as e:
        result["code"] = 0
        result["reply"] = f"{type(e).__name__}: {e}"
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except Exception:
                try:
                    smtp.close()
                except Exception:
                    pass
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
