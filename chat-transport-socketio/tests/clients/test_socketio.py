"""python-socketio's client against chat-server's Socket.IO transport.

Run by server/tests/socketio.rs, which starts the server and sets CHAT_URL
and CHAT_JWT_SECRET: connecting with a good and a bad token, commands with
acks (``call()``), events between a Python client and a native WebSocket
client (section 1, spoken here with websocket-client, which python-socketio
brings), and the support-widget dialect. Tokens are minted here with hmac.

python-socketio's synchronous client runs each incoming event's handler on
a thread of its own, so these tests compare what arrived, not in which
order it did.
"""

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import unittest
import uuid

import requests
import socketio
import websocket

URL = os.environ["CHAT_URL"]
SECRET = os.environ["CHAT_JWT_SECRET"]
WAIT = 5.0
TRANSPORTS = (["websocket"], ["polling", "websocket"])


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(claims, secret=SECRET):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def token(user, roles=None):
    claims = {"sub": user, "name": user, "exp": int(time.time()) + 3600}
    if roles:
        claims["roles"] = roles
    return mint(claims)


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Inbox:
    """Events as they arrive, from any thread; ``take`` waits for one."""

    def __init__(self, label):
        self.label = label
        self.events = []
        self.all = []
        self.cond = threading.Condition()

    def push(self, name, data):
        with self.cond:
            self.events.append((name, data))
            self.all.append((name, data))
            self.cond.notify_all()

    def take(self, name, pred=lambda d: True, wait=WAIT):
        deadline = time.monotonic() + wait
        with self.cond:
            while True:
                for i, (n, d) in enumerate(self.events):
                    if n == name and pred(d):
                        del self.events[i]
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    kept = [f"{n} {json.dumps(d)[:150]}" for n, d in self.events]
                    raise AssertionError(f"{self.label}: no {name} within {wait} s; kept: {kept}")
                self.cond.wait(left)

    def count(self, name, pred=lambda d: True):
        with self.cond:
            return sum(1 for n, d in self.all if n == name and pred(d))


class Sio:
    """A python-socketio client whose events are kept in ``inbox``."""

    def __init__(self, tok, transports, label="sio"):
        self.inbox = Inbox(label)
        self.connect_errors = []
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", lambda event, *args: self.inbox.push(event, args[0] if args else None))
        self.client.on("connect_error", lambda data=None: self.connect_errors.append(data))
        self.client.on("disconnect", lambda *args: self.inbox.push("disconnect", None))
        auth = {"token": tok} if tok is not None else None
        self.client.connect(URL, auth=auth, transports=transports, wait_timeout=WAIT)

    @classmethod
    def ready(cls, tok, transports, label="sio"):
        sio = cls(tok, transports, label)
        sio.ready_data = sio.inbox.take("ready")
        return sio

    def call(self, name, data=None):
        return self.client.call(name, data if data is not None else {}, timeout=WAIT)

    def ok(self, name, data=None):
        ack = self.call(name, data)
        assert ack.get("ok") is True, f"{name} {data} failed: {ack}"
        return ack["data"]

    def fail(self, name, data=None):
        ack = self.call(name, data)
        assert ack.get("ok") is False, f"{name} {data} should have failed: {ack}"
        assert isinstance(ack["error"]["message"], str), ack
        return ack["error"]["code"]

    def close(self):
        self.client.disconnect()


class Native:
    """A native WebSocket client of section 1."""

    def __init__(self, tok, label="native"):
        self.inbox = Inbox(label)
        self.replies = {}
        self.cond = threading.Condition()
        self.ref = 0
        ws_url = URL.replace("http", "ws", 1) + "/v1/ws?token=" + tok
        self.ws = websocket.create_connection(ws_url, timeout=WAIT)
        self.ws.settimeout(None)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.ready_data = self.inbox.take("ready")

    def _read(self):
        try:
            while True:
                text = self.ws.recv()
                if not text:
                    break
                frame = json.loads(text)
                if frame.get("type") == "reply":
                    with self.cond:
                        self.replies[frame["ref"]] = frame
                        self.cond.notify_all()
                else:
                    self.inbox.push(frame["type"], frame.get("data", frame.get("error")))
        except Exception:  # the connection ended
            pass

    def ok(self, kind, data=None):
        with self.cond:
            self.ref += 1
            ref = self.ref
        self.ws.send(json.dumps({"type": kind, "ref": ref, "data": data or {}}))
        deadline = time.monotonic() + WAIT
        with self.cond:
            while ref not in self.replies:
                left = deadline - time.monotonic()
                assert left > 0, f"no reply to {kind}"
                self.cond.wait(left)
            reply = self.replies.pop(ref)
        assert reply["ok"] is True, f"{kind} failed: {reply}"
        return reply["data"]

    def close(self):
        self.ws.close()


class Case(unittest.TestCase):
    def setUp(self):
        self.opened = []

    def tearDown(self):
        for c in self.opened:
            try:
                c.close()
            except Exception:
                pass

    def sio(self, tok, transports, label="sio"):
        s = Sio.ready(tok, transports, label)
        self.opened.append(s)
        return s

    def native(self, tok, label="native"):
        n = Native(tok, label)
        self.opened.append(n)
        return n


class Connect(Case):
    def test_a_good_token_gets_ready_then_connection_status(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                user = uid("py")
                s = self.sio(token(user), transports, user)
                self.assertEqual(s.ready_data["user"], {"id": user, "name": user, "roles": []})
                self.assertIsInstance(s.ready_data["session_id"], str)
                self.assertEqual(s.ready_data["rooms"], [])
                status = s.inbox.take("connection_status")
                self.assertEqual(status, {"status": "connected", "support_available": False})
                self.assertIn(s.client.transport(), transports)

    def test_bad_tokens_are_refused_unauthorized(self):
        now = int(time.time())
        bad = {
            "expired": mint({"sub": uid("old"), "exp": now - 120}),
            "forged": mint({"sub": uid("eve"), "exp": now + 3600}, "not-the-server-secret-not-the-server-secret"),
            "garbage": "not.a.jwt",
            "missing": None,
        }
        for transports in TRANSPORTS:
            for why, tok in bad.items():
                with self.subTest(transports=transports, why=why):
                    client = None
                    with self.assertRaises(socketio.exceptions.ConnectionError):
                        client = Sio(tok, transports, why)
                    self.assertIsNone(client)
        # The refusal's message, as the client's connect_error handler sees it.
        errors = []
        client = socketio.Client(reconnection=False)
        client.on("connect_error", lambda data=None: errors.append(data))
        with self.assertRaises(socketio.exceptions.ConnectionError):
            client.connect(URL, auth={"token": bad["expired"]}, transports=["websocket"], wait_timeout=WAIT)
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0]["message"].startswith("unauthorized"), errors)
        self.assertIn("expired", errors[0]["message"])


class Commands(Case):
    def test_commands_are_acked_through_call(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                ann_id, bob_id = uid("ann"), uid("bob")
                ann = self.sio(token(ann_id), transports, "ann")
                bob = self.sio(token(bob_id), transports, "bob")
                room = ann.ok("room:create", {"kind": "group", "name": "Py", "visibility": "public"})["room"]
                self.assertEqual(room["kind"], "group")
                joined = ann.ok("room:join", {"room_id": room["id"]})
                self.assertEqual(joined["room"]["id"], room["id"])
                self.assertEqual(ann.inbox.take("room:joined"), joined)
                cmid = str(uuid.uuid4())
                sent = ann.ok("message:send", {"room_id": room["id"], "client_msg_id": cmid, "body": "from python"})
                self.assertEqual(sent["message"]["seq"], 1)
                self.assertEqual(ann.inbox.take("message:ack"), {"client_msg_id": cmid, "message": sent["message"]})
                history = ann.ok("room:history", {"room_id": room["id"]})
                self.assertEqual([m["body"] for m in history["messages"]], ["from python"])
                self.assertFalse(history["has_more"])
                self.assertEqual(ann.ok("typing:start", {"room_id": room["id"]}), {})
                listed = ann.ok("room:list")
                self.assertIn(room["id"], [r["id"] for r in listed["rooms"]])
                pong = ann.call("ping")
                self.assertTrue(pong["ok"])
                self.assertEqual(pong["data"]["server_time"], pong["server_time"])
                self.assertEqual(ann.inbox.take("pong"), {"server_time": pong["server_time"]})
                # Errors.
                self.assertEqual(bob.fail("room:history", {"room_id": room["id"]}), "not_member")
                self.assertEqual(bob.fail("room:join", {"room_id": "nope"}), "invalid")
                self.assertEqual(bob.fail("no:such:thing"), "unknown_command")
                bob.client.emit("room:join", {"room_id": "nope"})
                self.assertEqual(bob.inbox.take("error")["code"], "invalid")


class Events(Case):
    def test_events_between_python_and_a_native_client(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                py_id, nat_id = uid("py"), uid("nat")
                nat = self.native(token(nat_id))
                py = self.sio(token(py_id), transports, "py")
                room = nat.ok("room:create", {"kind": "group", "name": "Both", "visibility": "public"})["room"]
                nat.ok("room:join", {"room_id": room["id"]})
                py.ok("room:join", {"room_id": room["id"]})
                self.assertEqual(nat.inbox.take("user:joined")["user"]["id"], py_id)

                count = 10
                for i in range(count):
                    body = f"m{i}"
                    data = {"room_id": room["id"], "client_msg_id": str(uuid.uuid4()), "body": body}
                    if i % 2 == 0:
                        nat.ok("message:send", data)
                    else:
                        py.ok("message:send", data)
                from_nat = [py.inbox.take("message:new")["message"] for _ in range(count // 2)]
                from_py = [nat.inbox.take("message:new")["message"] for _ in range(count // 2)]
                self.assertEqual(sorted(m["seq"] for m in from_nat), list(range(1, count + 1, 2)))
                self.assertEqual({m["sender_id"] for m in from_nat}, {nat_id})
                self.assertEqual(sorted(m["seq"] for m in from_py), list(range(2, count + 1, 2)))
                self.assertEqual({m["sender_id"] for m in from_py}, {py_id})

                nat.ok("typing:start", {"room_id": room["id"]})
                typing = py.inbox.take("typing:user")
                self.assertEqual(typing, {"room_id": room["id"], "user_id": nat_id, "typing": True})
                nat.ok("presence:update", {"status": "away"})
                # Presence is announced in the background to those sharing a
                # room when it is: py may or may not have heard nat come online.
                changed = py.inbox.take("presence:changed", lambda d: d["user_id"] == nat_id and d["status"] == "away")
                self.assertEqual(changed, {"user_id": nat_id, "status": "away"})

                py.ok("ping")
                nat.ok("ping")
                time.sleep(0.2)
                self.assertEqual(py.inbox.count("message:new"), count // 2, "nothing twice, nothing of its own")
                self.assertEqual(nat.inbox.count("message:new"), count // 2, "nothing twice, nothing of its own")

                py.close()
                offline = nat.inbox.take("presence:changed", lambda d: d["user_id"] == py_id and d["status"] == "offline")
                self.assertIsInstance(offline.get("last_seen"), str, offline)


class Widget(Case):
    def test_a_python_visitor_talks_to_a_native_agent(self):
        for transports in TRANSPORTS:
            with self.subTest(transports=transports):
                agent_id = uid("agent")
                agent = self.native(token(agent_id, ["support"]), "agent")
                response = requests.post(f"{URL}/v1/visitor-sessions", json={"name": "Pat"}, timeout=WAIT)
                self.assertEqual(response.status_code, 201, response.text)
                session = response.json()
                vic = self.sio(session["token"], transports, "visitor")
                self.assertEqual(vic.ready_data["user"]["roles"], ["visitor"])
                self.assertTrue(vic.inbox.take("connection_status")["support_available"])

                ack = vic.call("chat message", "Hello from Python")
                self.assertTrue(ack["ok"], ack)
                message = ack["data"]["message"]
                self.assertEqual(message["body"], "Hello from Python")
                received = vic.inbox.take("message_received")
                self.assertEqual(received["message"], message)
                room_id = message["room_id"]

                added = agent.inbox.take("room:added")
                self.assertEqual(added["room"]["id"], room_id)
                self.assertEqual(added["room"]["kind"], "support")
                agent.ok("room:join", {"room_id": room_id})
                answer = agent.ok("message:send", {"room_id": room_id, "client_msg_id": "a1", "body": "How can I help?"})
                chat = vic.inbox.take("chat message")
                self.assertEqual(chat["text"], "How can I help?")
                self.assertEqual(chat["from"]["id"], agent_id)
                self.assertEqual(chat["message"], answer["message"])

                vic.client.emit("chat message", {"text": "My parcel"})
                self.assertEqual(vic.inbox.take("message_received")["message"]["room_id"], room_id)
                heard = agent.inbox.take("message:new", lambda d: d["message"]["body"] == "My parcel")
                self.assertEqual(heard["message"]["room_id"], room_id)
                vic.ok("ping")
                time.sleep(0.15)
                self.assertEqual(vic.inbox.count("chat message"), 1, "never its own text")


if __name__ == "__main__":
    unittest.main(verbosity=2)
