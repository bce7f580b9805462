#!/usr/bin/env python3
"""The checks of scripts/compose-smoke.sh against the running compose stack,
from the host, with the Python standard library only (a handwritten
WebSocket client over a socket: no websockets, no websocat).

  compose_smoke.py checks     every check below; exit 1 on the first failure

Environment: COMPOSE (the `docker compose -p ... -f ... -f ...` command line,
space-separated), DOCKER (the docker CLI), BASE_HOST (default 127.0.0.1).

Checks: the menu was seeded by seed-menu; /readyz is 200 on 8001-8004; an
order placed over REST answers 201 with id and tracking_token and reaches
`delivered`, observed over the WebSocket (subprotocols foodchain.v1,
bearer.<token>) and then over REST; every service container runs as the
non-root user its image declares; `docker compose restart <svc>` of each
service right after an order was accepted loses nothing (the order still
reaches delivered, after the old process exited); `dlq stats` runs inside the
order-svc container; Prometheus scrapes all four services.
"""
import base64
import datetime as dt
import hashlib
import json
import os
import shlex
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

HOST = os.environ.get("BASE_HOST", "127.0.0.1")
SERVICES = {"order-svc": 8001, "delivery-svc": 8002, "notify-svc": 8003, "simulator": 8004}
COMPOSE = shlex.split(os.environ.get("COMPOSE", "docker compose"))
DOCKER = os.environ.get("DOCKER", "docker")
FLOW_TIMEOUT = float(os.environ.get("SMOKE_FLOW_TIMEOUT", "90"))


class CheckFailed(Exception):
    pass


class NotYetKnown(Exception):
    """404 to a tracker: notify-svc has not yet consumed the order's creation
    (it learns the token's hash from order.created.v1), so it answers as for
    an unknown order. Retried."""


def say(msg):
    print("[smoke] " + msg, flush=True)


def ok(msg):
    print("[smoke] \033[32mOK\033[0m " + msg, flush=True)


def fail(msg):
    raise CheckFailed(msg)


# ------------------------------------------------------------------ HTTP
def http(method, url, body=None, headers=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url, headers=None):
    status, _, raw = http("GET", url, headers=headers)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


def wait_ready(svc, port, secs=60):
    deadline = time.monotonic() + secs
    last = None
    while time.monotonic() < deadline:
        try:
            status, body = get_json("http://%s:%d/readyz" % (HOST, port))
            if status == 200:
                return body
            last = (status, body)
        except OSError as e:
            last = e
        time.sleep(0.25)
    fail("%s: /readyz not 200 within %d s (last: %r)" % (svc, secs, last))


# ------------------------------------------------------------- WebSocket
class WebSocket:
    """RFC 6455 client, enough for text frames, ping/pong and close."""

    def __init__(self, host, port, path, protocols, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: %s\r\n\r\n" % (path, host, port, key, ", ".join(protocols))
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                fail("WebSocket %s: connection closed during the handshake" % path)
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            self.sock.close()
            if " 404 " in lines[0] + " ":
                raise NotYetKnown(lines[0])
            fail("WebSocket %s: handshake answered %r" % (path, lines[0]))
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        want = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        if hdrs.get("sec-websocket-accept") != want:
            fail("WebSocket %s: bad Sec-WebSocket-Accept" % path)
        self.protocol = hdrs.get("sec-websocket-protocol")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("WebSocket closed by the server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload=b""):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv_text(self, timeout):
        """The next text message, answering pings; None on close."""
        self.sock.settimeout(timeout)
        parts = []
        while True:
            b0, b1 = self._read(2)
            opcode, fin = b0 & 0x0F, b0 & 0x80
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._read(8))
            if b1 & 0x80:
                fail("WebSocket: the server sent a masked frame")
            payload = self._read(n)
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                self.close_code = code
                return None
            elif opcode in (0x1, 0x0):
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode()
            # pong and binary frames are ignored

    def close(self):
        try:
            self._send(0x8, struct.pack(">H", 1000))
            self.sock.close()
        except OSError:
            pass


def parse_ts(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def watch_until_delivered(order_id, token, timeout=FLOW_TIMEOUT):
    """Follows an order over notify-svc's WebSocket until `delivered`.
    Returns (statuses seen, delivered entry's `at` as a UNIX time or None,
    the timeline: the last snapshot's entries plus the updates after it)."""
    deadline = time.monotonic() + timeout
    seen, delivered_at, timeline = [], None, []
    while True:
        try:
            ws = WebSocket(HOST, SERVICES["notify-svc"], "/ws/orders/" + order_id,
                           ["foodchain.v1", "bearer." + token])
        except NotYetKnown as e:
            if time.monotonic() >= deadline:
                fail("WebSocket /ws/orders/%s: still %r after %d s" % (order_id, str(e), timeout))
            time.sleep(0.2)
            continue
        if ws.protocol != "foodchain.v1":
            fail("WebSocket: server chose subprotocol %r, not foodchain.v1" % ws.protocol)
        first = True
        try:
            while time.monotonic() < deadline:
                raw = ws.recv_text(timeout=max(0.1, deadline - time.monotonic()))
                if raw is None:
                    break  # closed (e.g. too slow): reconnect for a fresh snapshot
                msg = json.loads(raw)
                kind = msg.get("type")
                if first and kind != "snapshot":
                    fail("WebSocket: first message is %r, not a snapshot" % kind)
                if not first and kind != "update":
                    fail("WebSocket: message after the snapshot is %r, not an update" % kind)
                first = False
                entries = msg.get("timeline", []) if kind == "snapshot" else [msg.get("entry") or {}]
                if kind == "snapshot":
                    timeline = []
                ids = {e.get("event_id") for e in timeline}
                for e in entries:
                    if e.get("event_id") in ids:
                        fail("WebSocket: entry %r sent twice in one session" % e)
                timeline += entries
                status = msg.get("status")
                if status and (not seen or seen[-1] != status):
                    seen.append(status)
                for e in entries:  # {"kind": "order", "status": "delivered", "at": ...}
                    if e.get("kind") == "order" and e.get("status") == "delivered" and e.get("at"):
                        delivered_at = delivered_at or parse_ts(e["at"])
                if status == "delivered":
                    return seen, delivered_at, timeline
        except socket.timeout:
            pass
        finally:
            ws.close()
        if time.monotonic() >= deadline:
            fail("order %s: not delivered within %d s over the WebSocket (statuses seen: %s)"
                 % (order_id, timeout, " -> ".join(seen) or "none"))


# ---------------------------------------------------------------- orders
def menu_item():
    status, menu = get_json("http://%s:8001/api/v1/menu" % HOST)
    if status != 200 or not isinstance(menu, list) or not menu:
        fail("GET /api/v1/menu: %s %r (seed-menu did not seed?)" % (status, menu))
    in_stock = [m for m in menu if (m.get("stock") or 0) > 0] or menu
    return menu, in_stock[0]["id"]


def place_order(item_id, name):
    body = {
        "customer": {"name": name, "address": "12 Analytical Row", "phone": "+44 20 7946 0958"},
        "items": [{"item_id": item_id, "quantity": 1}],
    }
    key = str(uuid.uuid4())
    status, headers, raw = http("POST", "http://%s:8001/api/v1/orders" % HOST, body,
                                {"content-type": "application/json", "Idempotency-Key": key})
    try:
        order = json.loads(raw)
    except ValueError:
        order = raw
    if status != 201 or not isinstance(order, dict) or not order.get("id") or not order.get("tracking_token"):
        fail("POST /api/v1/orders: %s %r" % (status, order))
    return order, time.time()


def rest_status(order):
    status, body = get_json("http://%s:8001/api/v1/orders/%s" % (HOST, order["id"]),
                            {"Authorization": "Bearer " + order["tracking_token"]})
    if status != 200:
        fail("GET /api/v1/orders/%s with its token: %s %r" % (order["id"], status, body))
    return body.get("status")


def wait_rest_delivered(order, secs=30):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if rest_status(order) == "delivered":
            return
        time.sleep(0.2)
    fail("order %s: REST status not delivered within %d s" % (order["id"], secs))


# ---------------------------------------------------------------- docker
def run(cmd, check=True, capture=True):
    p = subprocess.run(cmd, text=True, capture_output=capture)
    if check and p.returncode != 0:
        fail("%s exited %d:\n%s%s" % (" ".join(cmd), p.returncode, p.stdout or "", p.stderr or ""))
    return p


def container_id(svc):
    cid = run(COMPOSE + ["ps", "-q", svc]).stdout.strip()
    if not cid:
        fail("no running container for %s" % svc)
    return cid


def inspect(ref):
    return json.loads(run([DOCKER, "inspect", ref]).stdout)[0]


def docker_time(s):
    # 2026-12-01T21:32:20.727074922Z: fromisoformat wants at most 6 fraction digits
    if s.startswith("0001-"):
        return None
    head, _, frac = s.rstrip("Z").partition(".")
    return parse_ts(head + ("." + frac[:6] if frac else "") + "+00:00")


# ---------------------------------------------------------------- checks
def check_one_shots():
    out = run(COMPOSE + ["ps", "-a", "--format", "json"]).stdout.strip()
    rows = json.loads(out) if out.startswith("[") else [json.loads(l) for l in out.splitlines() if l.strip()]
    by = {r.get("Service"): r for r in rows}
    for svc in ("mongo-init", "seed-menu"):
        r = by.get(svc)
        if not r or r.get("State") != "exited" or r.get("ExitCode") != 0:
            fail("%s did not complete successfully: %r" % (svc, r))
    ok("mongo-init and seed-menu completed (exit 0)")


def check_menu():
    menu, _ = menu_item()
    ok("menu seeded by seed-menu: %d items (GET /api/v1/menu)" % len(menu))


def check_ready():
    for svc, port in SERVICES.items():
        body = wait_ready(svc, port)
        ok("%s :%d /readyz 200 %s" % (svc, port, json.dumps(body)[:120]))


def check_flow():
    _, item = menu_item()
    order, _ = place_order(item, "Ada")
    ok("POST /api/v1/orders 201: id %s, tracking_token present" % order["id"])
    t0 = time.monotonic()
    seen, _, timeline = watch_until_delivered(order["id"], order["tracking_token"])
    ok("WebSocket ws://%s:8003/ws/orders/%s: %s (%.1f s)" % (HOST, order["id"], " -> ".join(seen),
                                                             time.monotonic() - t0))
    global REFERENCE_STEPS
    REFERENCE_STEPS = steps(timeline)
    ok("its timeline: %s" % ", ".join(REFERENCE_STEPS))
    wait_rest_delivered(order)
    ok("GET /api/v1/orders/%s (Bearer token): delivered" % order["id"])


REFERENCE_STEPS = []


def steps(timeline):
    return ["%s:%s" % (e.get("kind"), e.get("status")) for e in timeline]


def check_users():
    for svc in SERVICES:
        c = inspect(container_id(svc))
        img = inspect(c["Image"])
        declared = img["Config"].get("User") or ""
        pid = c["State"]["Pid"]
        with open("/proc/%d/status" % pid) as f:
            uids = next(l.split()[1:] for l in f if l.startswith("Uid:"))
            f.seek(0)
            gids = next(l.split()[1:] for l in f if l.startswith("Gid:"))
        want_uid, _, want_gid = declared.partition(":")
        if not declared or want_uid in ("", "0", "root"):
            fail("%s: image declares no non-root USER (%r)" % (svc, declared))
        if set(uids) != {want_uid} or (want_gid and set(gids) != {want_gid}):
            fail("%s: process %d runs as uid %s gid %s, image declares %s" % (svc, pid, uids, gids, declared))
        ok("%s: image USER %s; its process (host pid %d) runs as uid %s gid %s" % (svc, declared, pid, uids[0], gids[0]))


def check_restarts():
    _, item = menu_item()
    for svc in SERVICES:
        old = inspect(container_id(svc))
        order, accepted = place_order(item, "Restart %s" % svc)
        began = time.time()
        run(COMPOSE + ["restart", svc])
        new = inspect(container_id(svc))
        exited = docker_time(new["State"]["FinishedAt"])  # when the old process ended
        started = docker_time(new["State"]["StartedAt"])
        if old["State"]["StartedAt"] == new["State"]["StartedAt"]:
            fail("%s: docker compose restart did not restart the container" % svc)
        wait_ready(svc, SERVICES[svc])
        seen, delivered_at, timeline = watch_until_delivered(order["id"], order["tracking_token"])
        wait_rest_delivered(order)
        missing = [x for x in REFERENCE_STEPS if x not in steps(timeline)]
        if missing:
            fail("order %s (restart of %s): its timeline lacks %s (has %s)"
                 % (order["id"], svc, missing, steps(timeline)))
        if delivered_at is None:
            fail("order %s: no delivered entry with a time in its timeline" % order["id"])
        if exited is None or delivered_at <= exited:
            fail("%s restart did not land mid-flow: the order was delivered at %.3f, before the old "
                 "process exited (%r); raise SIMULATOR_DELAY_SCALE" % (svc, delivered_at, exited))
        ok("restart %s %.2f s after order %s was accepted: old process exited +%.2f s, new one started "
           "+%.2f s, order delivered +%.2f s; full timeline (%d entries, as the unrestarted flow's)"
           % (svc, began - accepted, order["id"], exited - accepted, started - accepted,
              delivered_at - accepted, len(timeline)))


def check_dlq():
    p = run(COMPOSE + ["exec", "-T", "order-svc", "dlq", "stats"], check=False)
    if p.returncode != 0:
        fail("docker compose exec order-svc dlq stats exited %d:\n%s%s" % (p.returncode, p.stdout, p.stderr))
    first = (p.stdout.strip().splitlines() or ["(no output)"])[0]
    ok("docker compose exec order-svc dlq stats: exit 0 (%s)" % first[:100])


def check_prometheus(secs=45):
    deadline = time.monotonic() + secs
    last = None
    while time.monotonic() < deadline:
        try:
            status, body = get_json("http://%s:9090/api/v1/targets" % HOST)
            targets = [t for t in (body or {}).get("data", {}).get("activeTargets", [])
                       if t.get("labels", {}).get("job") == "foodchain"]
            up = sorted(t["labels"].get("service", "?") for t in targets if t.get("health") == "up")
            last = up
            if len(up) == 4:
                ok("prometheus scrapes %s: all up" % ", ".join(up))
                return
        except (OSError, ValueError) as e:
            last = e
        time.sleep(1)
    fail("prometheus: not all four foodchain targets up within %d s (up: %r)" % (secs, last))


def main():
    steps = [check_one_shots, check_menu, check_ready, check_flow, check_users, check_restarts,
             check_dlq, check_prometheus]
    try:
        for step in steps:
            step()
    except CheckFailed as e:
        print("[smoke] \033[31mFAILED\033[0m %s" % e, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] != "checks":
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
