#!/usr/bin/env python3
"""An IMAP client driven step by step on one connection (standard library only).

Used by levee's end-to-end tests to act like a mail client across a failover: it logs in
(implicit TLS with --ssl, none with --plain, else STARTTLS), prints {"ok": true} and then reads one JSON
command per line from stdin and answers each with ONE JSON line on stdout:

  {"op": "select", "mailbox": "INBOX"}         -> {"ok", "exists", "uidvalidity", "uidnext"}
  {"op": "list"}                               -> {"ok", "messages": [{"uid", "flags",
                                                   "message_id"}]}   (UID FETCH 1:*)
  {"op": "fetch", "uid": n}                    -> {"ok", "body_b64"} (UID FETCH n BODY.PEEK[])
  {"op": "flag", "uid": n, "flag": "\\Flagged"} -> {"ok"}  (UID STORE n +FLAGS)
  {"op": "delete", "uid": n}                   -> {"ok"}  (UID STORE +\\Deleted, EXPUNGE)
  {"op": "append", "mailbox": "Sent", "message_b64": "...", "flags": "(\\Seen)"} -> {"ok"}
  {"op": "create", "mailbox": "Sent"}          -> {"ok"}
  {"op": "copy", "uid": n, "mailbox": "Archive"} -> {"ok"}  (UID COPY)
  {"op": "copy", "seq": n, "mailbox": "Archive"} -> {"ok"}  (COPY by message number)
  {"op": "move", "seq": n, "mailbox": "Archive"} -> {"ok"}  (MOVE by message number)
  {"op": "noop"}                               -> {"ok"}
  {"op": "raw", "command": "UID", "args": ["FETCH", "1:*", "(FLAGS) (CHANGEDSINCE 5)"]}
                                               -> {"ok"}  (any command, its words as given)
  {"op": "idle"}                               -> {"ok"}  (IDLE, once the server said "+")
  {"op": "idle_wait", "until": "EXISTS"}       -> {"ok", "lines"}  (lines read in IDLE, up to
                                                  the first naming "until")
  {"op": "idle_done"}                          -> {"ok", "lines"}  (DONE, up to IDLE's end)
  {"op": "logout"}                             -> {"ok"} and exit

Every answer also carries "untagged": the untagged responses seen since the previous
command, so a test can check that no BYE was ever seen. A failure answers {"ok": false, "error": "..."}. The password is never printed.
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


def untagged(imap):
    seen = []
    for key, values in imap.untagged_responses.items():
        for value in values:
            if isinstance(value, tuple):
                value = value[0]
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            seen.append("%s %s" % (key, value))
    imap.untagged_responses.clear()
    return seen


def step(imap, cmd):
    op = cmd["op"]
    if op == "select":
        typ, data = imap.select(cmd["mailbox"])
        if typ != "OK":
            return {"ok": False, "error": "select: %r" % data}
        validity = int(imap.untagged_responses.get("UIDVALIDITY", [b"0"])[-1])
        uidnext = int(imap.untagged_responses.get("UIDNEXT", [b"0"])[-1])
        return {"ok": True, "exists": int(data[0]), "uidvalidity": validity, "uidnext": uidnext}
    if op == "list":
        typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        if typ != "OK":
            return {"ok": False, "error": "fetch: %r" % data}
        messages = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            head = item[0].decode("utf-8", "replace")
            uid = re.search(r"UID (\d+)", head)
            flags = re.search(r"FLAGS \(([^)]*)\)", head)
            mid = re.search(rb"(?im)^message-id:\s*(\S+)", item[1])
            messages.append({
                "uid": int(uid.group(1)) if uid else None,
                "flags": flags.group(1).split() if flags else [],
                "message_id": mid.group(1).decode() if mid else None,
            })
        return {"ok": True, "messages": messages}
    if op == "fetch":
        typ, data = imap.uid("FETCH", str(cmd["uid"]), "(BODY.PEEK[])")
        bodies = [item[1] for item in data if isinstance(item, tuple)]
        if typ != "OK" or not bodies:
            return {"ok": False, "error": "fetch: %s %r" % (typ, data)}
        return {"ok": True, "body_b64": base64.b64encode(bodies[0]).decode()}
    if op == "flag":
        typ, data = imap.uid("STORE", str(cmd["uid"]), "+FLAGS", "(%s)" % cmd["flag"])
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "delete":
        typ, data = imap.uid("STORE", str(cmd["uid"]), "+FLAGS", "(\\Deleted)")
        if typ != "OK":
            return {"ok": False, "error": repr(data)}
        typ, data = imap.expunge()
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "append":
        message = base64.b64decode(cmd["message_b64"])
        typ, data = imap.append(cmd["mailbox"], cmd.get("flags"), None, message)
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "create":
        typ, data = imap.create(cmd["mailbox"])
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "copy" and "seq" in cmd:
        typ, data = imap.copy(str(cmd["seq"]), cmd["mailbox"])
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "copy":
        typ, data = imap.uid("COPY", str(cmd["uid"]), cmd["mailbox"])
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "move":
        typ, data = imap._simple_command("MOVE", str(cmd["seq"]), cmd["mailbox"])
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "raw":
        name = cmd["command"].upper()
        if name not in imaplib.Commands:
            imaplib.Commands[name] = ("AUTH", "SELECTED")
        typ, data = imap._simple_command(name, *cmd.get("args", []))
        if name in ("SELECT", "EXAMINE") and typ == "OK":
            imap.state = "SELECTED"
        return {"ok": typ == "OK", "error": repr(data)}
    if op == "idle":
        tag = imap._new_tag()
        imap.send(tag + b" IDLE\r\n")
        line = imap._get_line()
        imap.levee_idle_tag = tag
        return {"ok": line.startswith(b"+"), "error": line.decode("utf-8", "replace")}
    if op == "idle_wait":
        wanted = cmd["until"].upper().encode()
        lines = []
        while True:
            line = imap._get_line()
            lines.append(line.decode("utf-8", "replace"))
            if wanted in line.upper():
                return {"ok": True, "lines": lines}
    if op == "idle_done":
        tag = imap.levee_idle_tag
        imap.send(b"DONE\r\n")
        lines = []
        while True:
            line = imap._get_line()
            lines.append(line.decode("utf-8", "replace"))
            if line.startswith(tag + b" "):
                return {"ok": line.startswith(tag + b" OK"), "lines": lines}
    if op == "noop":
        typ, data = imap.noop()
        return {"ok": typ == "OK"}
    if op == "logout":
        imap.logout()
        return {"ok": True}
    return {"ok": False, "error": "unknown op %s" % op}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--ssl", action="store_true")
    ap.add_argument("--plain", action="store_true", help="no TLS (a server on loopback)")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    try:
        if args.ssl:
            imap = imaplib.IMAP4_SSL(args.host, args.port, ssl_context=tls_context(),
                                     timeout=args.timeout)
        else:
            imap = imaplib.IMAP4(args.host, args.port, timeout=args.timeout)
            if not args.plain:
                imap.starttls(ssl_context=tls_context())
        imap.login(args.user, args.password)
    except Exception as err:  # noqa: BLE001 - reported to the test as JSON
        print(json.dumps({"ok": False, "error": "login: %s" % err}), flush=True)
        return 1
    print(json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            answer = step(imap, cmd)
        except Exception as err:  # noqa: BLE001 - reported to the test as JSON
            answer = {"ok": False, "error": "%s: %s" % (type(err).__name__, err)}
        answer["untagged"] = untagged(imap)
        print(json.dumps(answer), flush=True)
        if cmd["op"] == "logout":
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
