#!/usr/bin/env python3
"""Concurrent SMTP load with smtplib, reporting every acknowledged message at once.

Each thread keeps one connection and sends messages with distinct Message-IDs. As soon as
the server answers 250 to a message's final dot, "ACK <message-id>" is printed and flushed,
so a test that kills the server mid-run knows exactly which messages were acknowledged.
A thread whose connection fails reconnects until --seconds have passed since it started;
with --resend N it first sends the message that got no 250 again, up to N times, under
the same Message-ID, as an MTA would.
Ends with one line: "DONE acked=N errors=M".
"""

import argparse
import smtplib
import sys
import threading
import time

lock = threading.Lock()
counts = {"acked": 0, "errors": 0}


def emit(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def message(mid, rcpt, size):
    filler = ("levee load test line " * 4 + "\r\n") * max(1, size // 86)
    return (
        f"Date: Sun, 22 Nov 2026 06:00:00 +0000\r\nFrom: <load@example.org>\r\n"
        f"To: <{rcpt}>\r\nSubject: load {mid}\r\nMessage-ID: <{mid}>\r\n\r\n{filler}"
    ).encode()


def worker(args, tid, deadline):
    sent = 0
    smtp = None
    tries = 0
    while sent < args.count and time.time() < deadline:
        mid = f"{args.prefix}-{tid}-{sent}@example.org"
        try:
            if smtp is None:
                smtp = smtplib.SMTP(args.host, args.port, timeout=10)
                smtp.ehlo("load.test")
            smtp.sendmail("load@example.org", [args.to], message(mid, args.to, args.size))
            emit(f"ACK {mid}")
            with lock:
                counts["acked"] += 1
            sent += 1
            tries = 0
            time.sleep(args.pause)
        except (OSError, smtplib.SMTPException) as e:
            smtp = None
            tries += 1
            if tries <= args.resend:
                # As an MTA does: the same message again, on a new connection.
                time.sleep(0.2)
                continue
            with lock:
                counts["errors"] += 1
            reason = " ".join(str(e).split())[:160]
            emit(f"ERR {mid} {type(e).__name__}: {reason}")
            sent += 1
            tries = 0
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--count", type=int, default=50, help="messages per thread")
    ap.add_argument("--to", required=True)
    ap.add_argument("--prefix", default="load")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between a thread's messages")
    ap.add_argument(
        "--resend",
        type=int,
        default=0,
        help="times a message that got no 250 is sent again (same Message-ID) before it counts as an error",
    )
    args = ap.parse_args()
    deadline = time.time() + args.seconds
    threads = [threading.Thread(target=worker, args=(args, t, deadline)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit(f"DONE acked={counts['acked']} errors={counts['errors']}")


if __name__ == "__main__":
    main()
