"""`keytool mcp` driven by the official Python MCP client (the PyPI package `mcp`).

Starts a relay on a loopback port chosen by the kernel, registers two identities with the
keytool command line, starts one MCP server per identity over stdio through the client
session, and checks, as a client sees them:

- the handshake at MCP revision 2025-11-25 (`initialize`) and at 2026-07-28 (`discover`);
- the tool list and their input schemas;
- send, wait_for_messages (no item lost or repeated across calls), ack, status, resolve,
  contacts and contact requests;
- profiles and the directory: profile_set (a listed profile with a capability), profile_show
  (verified), find by capability and by text;
- presence: presence_set (busy with a note, shown at once), presence_show (a contact's full
  presence, verified; a listed agent's status alone; not_found), who (empty, then a contact),
  and refusals (offline, a duration above the relay's limit);
- a subscription to `formica://inbox` and the `notifications/resources/updated` a new
  message brings, then reading the resource;
- sealed payloads: send seals by default (both agents published an encryption key at
  registration), the reads (the inbox resource, wait_for_messages, conversation reads) open
  them (`sealed`, `payload`) and the envelope holds no plaintext; `plain` opts out;
- conversations: call, calls, accept, decline, conversation_send, conversation_history,
  conversation_list, conversation_leave, conversation_close, and a conversation as the
  resource `formica://conversations/{id}` (its template, reads, a subscription's update);
- tool errors carrying the protocol's error code and keytool's hint for bad input (an unknown
  handle, a payload over the relay's limit, a malformed id), never an empty result.

Usage: mcp_e2e.py --keytool PATH --relay PATH
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

from mcp import ClientSession, StdioServerParameters
from mcp.client import Client
from mcp.client.stdio import stdio_client

# resources/subscribe is the 2025-11-25 way; this test uses it on purpose (and listen at
# 2026-07-28 below), so the SDK's deprecation warning is noise here.
warnings.filterwarnings("ignore", message="resources/subscribe is removed")
warnings.filterwarnings("ignore", message="resources/unsubscribe is removed")

EXPECTED_TOOLS = {
    "whoami", "send", "inbox", "wait_for_messages", "ack", "status", "resolve",
    "contacts_list", "contacts_add", "contacts_remove", "contact_request",
    "requests_list", "requests_accept", "requests_reject",
    "profile_set", "profile_show", "find", "presence_set", "presence_show", "who",
    "call", "calls", "accept", "decline", "conversation_send", "conversation_history",
    "conversation_leave", "conversation_close", "conversation_list",
}


def fail(msg):
    print(f"mcp_e2e: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def start_relay(relay, root):
    env = dict(os.environ, FORMICA_LOG="warn")
    p = subprocess.Popen(
        [relay, "serve", "--listen", "127.0.0.1:0", "--pow-difficulty", "8",
         "--data-dir", os.path.join(root, "relay-data")],
        stdout=subprocess.PIPE, env=env, text=True)
    line = p.stdout.readline()
    url = next((w for w in line.split() if w.startswith("http://")), None)
    check(url, f"the relay printed no URL: {line!r}")
    return p, url


def keytool_cli(keytool, home, url, *args):
    r = subprocess.run([keytool, "--home", home, "--relay", url, "--json", *args],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, f"keytool {args}: {r.stdout}{r.stderr}")
    return json.loads(r.stdout.splitlines()[0])


def server(keytool, home, url):
    return StdioServerParameters(command=keytool, args=["--home", home, "--relay", url, "mcp"])


def result(res, what):
    """The structured content of a successful tool call."""
    check(not res.is_error, f"{what}: tool error {res.content}")
    check(res.structured_content is not None, f"{what}: no structured content")
    return res.structured_content


def error(res, what):
    """The error object of a failed tool call (which must be a tool error, not empty)."""
    check(res.is_error, f"{what}: expected a tool error, got {res.structured_content}")
    sc = res.structured_content or {}
    err = sc.get("error") or {}
    check(err.get("code"), f"{what}: the tool error has no code: {res}")
    text = " ".join(getattr(c, "text", "") for c in res.content)
    check(err["code"] in text, f"{what}: the error text does not name the code: {text}")
    return err


async def main(keytool, relay):
    root = tempfile.mkdtemp(prefix="formica-mcp-")
    relay_proc, url = start_relay(relay, root)
    try:
        alice_home = os.path.join(root, "alice")
        bob_home = os.path.join(root, "bob")
        alice = keytool_cli(keytool, alice_home, url, "register", "@alice")["handle"]
        bob = keytool_cli(keytool, bob_home, url, "register", "@bob")["handle"]

        updates = asyncio.Queue()
        stray = []  # anything the client could not take as MCP (a stray line on stdout)

        async def on_message(msg):
            if isinstance(msg, Exception):
                stray.append(msg)
            elif getattr(msg, "method", "") == "notifications/resources/updated":
                await updates.put(msg.params.uri)

        async def on_other(msg):
            if isinstance(msg, Exception):
                stray.append(msg)

        async def read_inbox(session):
            res = await session.read_resource("formica://inbox")
            return json.loads(res.contents[0].text)

        def drain():
            while not updates.empty():
                updates.get_nowait()

        async with stdio_client(server(keytool, alice_home, url)) as (ar, aw), \
                stdio_client(server(keytool, bob_home, url)) as (br, bw):
            async with ClientSession(ar, aw, message_handler=on_other) as a, \
                    ClientSession(br, bw, message_handler=on_message) as b:
                ia = await a.initialize()
                await b.initialize()
                check(ia.protocol_version == "2025-11-25",
                      f"negotiated {ia.protocol_version}, not 2025-11-25")
                tools = {t.name: t for t in (await a.list_tools()).tools}
                check(EXPECTED_TOOLS <= set(tools), f"missing tools: {EXPECTED_TOOLS - set(tools)}")
                check(tools["send"].input_schema.get("required") == ["to"], "send's schema")
                check(tools["profile_set"].input_schema.get("required") == ["name"],
                      "profile_set's schema")

                me = result(await a.call_tool("whoami", {}), "whoami")
                check(me.get("handle") == alice, f"whoami: {me}")

                # A stranger is refused by bob's relay: a tool error with the code and the hint.
                err = error(await a.call_tool("send", {"to": [bob], "text": "too early"}),
                            "send before a grant")
                check(err["code"] == "not_contact", f"send before a grant: {err}")
                check("contact" in err.get("hint", ""), f"no hint: {err}")
                err = error(await a.call_tool("send", {"to": ["@nobody"], "text": "x"}),
                            "send to an unknown handle")
                check(err["code"] == "unknown_recipient", f"unknown handle: {err}")
                err = error(await a.call_tool("send", {"to": [bob], "text": "x" * 200_000}),
                            "oversized payload")
                check(err["code"] in ("payload_too_large", "envelope_too_large"),
                      f"oversized payload: {err}")
                # Too large only once sealed: the hint names the tool's `plain`, not --plain.
                err = error(await a.call_tool("send", {"to": [bob], "text": "y" * 7_000}),
                            "a payload too large once sealed")
                check(err["code"] == "payload_too_large" and "`plain`" in err.get("hint", "")
                      and "--" not in err.get("hint", ""), f"sealed too large: {err}")
                err = error(await a.call_tool("status", {"id": "not-hex"}), "bad id")
                check(err["code"] == "invalid_field", f"bad id: {err}")
                err = error(await a.call_tool("send", {"to": [bob], "text": "x", "as": "@bob"}),
                            "an identity argument")
                check("unknown argument" in err["message"], f"identity argument: {err}")
                err = error(await a.call_tool("send", {"to": [bob], "payload": {"text": "x"}}),
                            "a payload without its type")
                check("`type`" in err["message"], f"payload without type: {err}")
                # keytool's command-line words become tool words in messages and hints.
                err = error(await a.call_tool("ack", {"id": "0" * 64}), "ack of an unknown id")
                check("--" not in err["message"] + err.get("hint", "")
                      and "`from`" in err.get("hint", ""), f"ack hint: {err}")
                err = error(await a.call_tool("send", {"to": [bob], "text": "x",
                                                       "ack_deadline": "30d"}), "ack_deadline")
                check("`ack_deadline`" in err["message"], f"ack_deadline message: {err}")

                # Contacts: alice asks, bob accepts; a second request (a higher level) is
                # rejected.
                result(await a.call_tool("contact_request",
                                         {"handle": bob, "level": "message", "note": "hi"}),
                       "contact_request")
                reqs = result(await b.call_tool("requests_list", {}), "requests_list")["requests"]
                check(len(reqs) == 1 and reqs[0]["from"] == alice, f"requests: {reqs}")
                result(await b.call_tool("requests_accept", {"id": reqs[0]["id"]}), "accept")
                contacts = result(await b.call_tool("contacts_list", {}), "contacts_list")
                check(any(c.get("handle") == alice for c in contacts["contacts"]),
                      f"contacts: {contacts}")
                result(await a.call_tool("contact_request", {"handle": bob, "level": "task"}),
                       "a second contact_request")
                reqs = result(await b.call_tool("requests_list", {}), "requests_list 2")["requests"]
                check(len(reqs) == 1 and reqs[0]["level"] == "task", f"requests: {reqs}")
                err = error(await a.call_tool("contact_request", {"handle": bob, "level": "task"}),
                            "a request while one is pending")
                check(err["code"] == "rate_limited" and "3600" not in err.get("hint", ""),
                      f"pending request: {err}")
                result(await b.call_tool("requests_reject", {"id": reqs[0]["id"]}), "reject")
                check(result(await b.call_tool("requests_list", {}), "requests_list 3")
                      ["requests"] == [], "the rejected request is still listed")

                # wait_for_messages from the start: the two contact requests are there already.
                w1 = result(await b.call_tool("wait_for_messages", {"timeout_s": 5}), "wait 1")
                check(len(w1["items"]) == 2 and not w1["timed_out"], f"wait 1: {w1}")
                page = result(await b.call_tool("inbox", {"limit": 1}), "inbox")
                check(len(page["items"]) == 1 and page["next"] == w1["items"][0]["cursor"],
                      f"inbox with limit 1: {page}")
                cursor = w1["next"]

                # Push: subscribing announces what was never read through the resource (the
                # two requests); reading drains it; a read after that is empty.
                await b.subscribe_resource("formica://inbox")
                check(await asyncio.wait_for(updates.get(), timeout=15) == "formica://inbox",
                      "no update for the unread items")
                body = await read_inbox(b)
                check(len(body["items"]) == 2, f"first read: {body}")
                check((await read_inbox(b))["items"] == [], "a second read repeated items")
                await asyncio.sleep(0.3)
                drain()
                # A new message: an update, and reads return exactly it, once.
                sent = result(await a.call_tool("send", {"to": [bob], "text": "please ack",
                                                         "ack_deadline": "60s"}), "send")
                check(sent.get("sealed") is True and sent.get("own_copy") is True,
                      f"send did not seal: {sent}")
                msg_id = sent["id"]
                seen = []
                deadline = time.monotonic() + 15
                while msg_id not in seen:
                    left = deadline - time.monotonic()
                    check(left > 0, f"no update brought {msg_id}; read {seen}")
                    check(await asyncio.wait_for(updates.get(), timeout=left) == "formica://inbox",
                          "an update for another resource")
                    got = (await read_inbox(b))["items"]
                    for i in got:
                        check(i.get("sealed") is True and i["payload"]["text"] == "please ack"
                              and "please ack" not in json.dumps(i["envelope"]),
                              f"the inbox resource did not open the sealed message: {i}")
                    seen += [i["envelope"]["id"] for i in got]
                check(seen == [msg_id], f"reads after the update returned {seen}")
                check((await read_inbox(b))["items"] == [], "the message was read twice")

                # wait_for_messages from the cursor: exactly the new message.
                w2 = result(await b.call_tool("wait_for_messages",
                                              {"after": cursor, "timeout_s": 10}), "wait 2")
                ids = [i["envelope"]["id"] for i in w2["items"]]
                check(ids == [msg_id], f"wait 2 returned {ids}, not [{msg_id}]")
                check(w2["items"][0].get("ack") == "pending", f"ack state: {w2['items'][0]}")
                check(w2["items"][0].get("sealed") is True
                      and w2["items"][0]["payload"]["text"] == "please ack"
                      and "sealed" in w2["items"][0]["envelope"]["payload"],
                      f"wait_for_messages did not open the sealed message: {w2['items'][0]}")
                # A wait that blocks: it returns the message sent while it waits, promptly.
                t0 = time.monotonic()
                waiting = asyncio.create_task(
                    b.call_tool("wait_for_messages", {"after": w2["next"], "timeout_s": 30}))
                await asyncio.sleep(1.0)
                check(not waiting.done(), f"the wait returned before anything was sent: "
                      f"{waiting.result() if waiting.done() else ''}")
                second = result(await a.call_tool("send", {"to": [bob], "text": "while you wait"}),
                                "send during a wait")["id"]
                w3 = result(await waiting, "wait 3")
                check([i["envelope"]["id"] for i in w3["items"]] == [second] and not w3["timed_out"],
                      f"wait 3: {w3}")
                check(time.monotonic() - t0 < 15, "the blocked wait did not return promptly")
                t0 = time.monotonic()
                w4 = result(await b.call_tool("wait_for_messages",
                                              {"after": w3["next"], "timeout_s": 1}), "wait 4")
                check(w4["items"] == [] and w4["timed_out"], f"wait 4: {w4}")
                check(time.monotonic() - t0 < 10, "wait 4 did not return after its timeout")
                # `plain` sends it unsealed, on purpose, and says so; the reader gets it plain.
                p = result(await a.call_tool("send", {"to": [bob], "text": "in the clear",
                                                      "plain": True}), "send plain")
                check(p.get("sealed") is False and p.get("unsealed_reason") == "plain_requested",
                      f"send plain: {p}")
                w5 = result(await b.call_tool("wait_for_messages",
                                              {"after": w4["next"], "timeout_s": 10}), "wait 5")
                check(len(w5["items"]) == 1 and "sealed" not in w5["items"][0]
                      and w5["items"][0]["envelope"]["payload"]["text"] == "in the clear",
                      f"wait 5 (plain): {w5}")

                result(await b.call_tool("ack", {"id": msg_id, "status": "processed"}), "ack")
                st = result(await a.call_tool("status", {"id": msg_id}), "status")
                r0 = st["recipients"][0]
                check(r0["status"] == "acked" and r0["ack_status"] == "processed",
                      f"status: {st}")

                keys = result(await a.call_tool("resolve", {"handle": bob}), "resolve")
                check(keys.get("current_key"), f"resolve: {keys}")
                err = error(await b.call_tool("ack", {"id": msg_id}), "a second ack")
                check(err["code"] == "ack_settled", f"second ack: {err}")

                # Profiles: alice publishes a listed profile with a capability; bob reads it,
                # verified, and finds it by capability and by text (any case, with a space).
                err = error(await b.call_tool("profile_show", {}), "bob's own profile, unset")
                check(err["code"] == "not_found" and "profile_set" in err.get("hint", "")
                      and "--" not in err.get("hint", ""), f"profile_show without one: {err}")
                prof = result(await a.call_tool("profile_set", {
                    "name": "Alice", "description": "Reviews Rust code",
                    "capabilities": [{"id": "code-review", "version": "2", "tags": ["rust", "sql"]},
                                     {"id": "translate"}],
                    "accepts": ["message", "task_request"], "listed": True, "ttl": "1d"}),
                    "profile_set")
                check(prof.get("handle") == alice and prof.get("result") == "stored"
                      and prof.get("listed") is True, f"profile_set: {prof}")
                shown = result(await b.call_tool("profile_show", {"handle": alice}),
                               "profile_show")
                p = shown.get("profile", {})
                check(shown.get("verified") is True and shown.get("handle") == alice
                      and p.get("seq") == prof["seq"] and p.get("name") == "Alice"
                      and p["capabilities"][0] == {"id": "code-review", "version": "2",
                                                   "tags": ["rust", "sql"]}
                      and p.get("accepts") == ["message", "task_request"],
                      f"profile_show: {shown}")
                for query in ({"capability": "code-review"}, {"text": "rust CODE"},
                              {"capability": "translate", "all": True, "limit": 1}):
                    found = result(await b.call_tool("find", query), f"find {query}")
                    check([r["handle"] for r in found["results"]] == [alice]
                          and all(r["verified"] is True for r in found["results"])
                          and found["count"] == 1 and found["next"] is None,
                          f"find {query}: {found}")
                found = result(await b.call_tool("find", {"capability": "cooking"}), "find none")
                check(found["results"] == [] and found["next"] is None, f"find none: {found}")
                err = error(await a.call_tool("profile_set", {"name": "x",
                                                              "capabilities": [{"id": "Bad"}]}),
                            "a capability that is not a word")
                check(err["code"] == "keytool.input" and "`capabilities`" in err["message"],
                      f"bad capability: {err}")
                err = error(await a.call_tool("profile_set", {"name": "x", "ttl": "90d"}),
                            "a ttl above the relay's")
                check(err["code"] == "invalid_field", f"long ttl: {err}")

                # Presence: bob (who granted alice a level) says he is busy; alice sees it,
                # verified, in presence_show and, once she lists bob as a contact, in who. bob
                # sees alice's status alone (her profile is listed; she granted him nothing).
                check(tools["presence_set"].input_schema.get("required") == ["status"],
                      "presence_set's schema")
                st = result(await b.call_tool("presence_set", {"status": "busy", "minutes": 30,
                                                             "note": "in review"}),
                            "presence_set")
                check(st.get("handle") == bob and st.get("status") == "busy"
                      and st.get("result") == "stored" and st.get("shown") == "busy"
                      and st.get("note") == "in review"
                      and isinstance(st.get("connected_until"), int)
                      and st["expires"] - st["signed"]["ts"] == 30 * 60_000,
                      f"presence_set: {st}")
                seen = result(await a.call_tool("presence_show", {"handle": bob}),
                              "presence_show")
                check(seen.get("handle") == bob and seen.get("status") == "busy"
                      and seen.get("view") == "full" and seen.get("verified") is True
                      and seen.get("note") == "in review"
                      and isinstance(seen.get("last_seen"), int)
                      and seen.get("expires") == st["expires"]
                      and seen.get("signed") == st["signed"], f"presence_show: {seen}")
                own = result(await a.call_tool("presence_show", {}), "presence_show, own")
                check(own.get("handle") == alice and own.get("view") == "full",
                      f"own presence: {own}")
                coarse = result(await b.call_tool("presence_show", {"handle": alice}),
                                "presence_show, coarse")
                check(coarse.get("view") == "coarse" and coarse.get("last_seen") is None
                      and coarse.get("verified") is False
                      and coarse.get("status") in ("available", "offline"),
                      f"coarse presence: {coarse}")
                w = result(await a.call_tool("who", {}), "who, no contacts")
                check(w.get("presence") == [] and w.get("count") == 0, f"who, empty: {w}")
                result(await a.call_tool("contacts_add", {"handle": bob, "level": "read"}),
                       "contacts_add for who")
                w = result(await a.call_tool("who", {}), "who")
                check(w.get("count") == 1 and [p["handle"] for p in w["presence"]] == [bob]
                      and w["presence"][0]["status"] == "busy"
                      and w["presence"][0]["verified"] is True
                      and w["presence"][0]["note"] == "in review", f"who: {w}")
                err = error(await a.call_tool("presence_show", {"handle": "@nobody"}),
                            "presence of an unknown handle")
                check(err["code"] == "not_found", f"presence of @nobody: {err}")
                err = error(await b.call_tool("presence_set", {"status": "offline"}),
                            "presence_set offline")
                check(err["code"] == "keytool.input" and "`status`" in err["message"],
                      f"presence_set offline: {err}")
                err = error(await b.call_tool("presence_set", {"status": "busy",
                                                               "minutes": 100_000}),
                            "a status above the relay's limit")
                check(err["code"] == "invalid_field", f"long status: {err}")
                result(await b.call_tool("presence_set", {"status": "available"}),
                       "presence_set available")
                seen = result(await a.call_tool("presence_show", {"handle": bob}),
                              "presence_show after available")
                check(seen.get("status") == "available" and seen.get("note") is None
                      and seen["signed"]["status"] == "available", f"available: {seen}")

                # Conversations: alice calls, bob answers, follows it as a resource, reads,
                # leaves; a second call is declined.
                c1 = result(await a.call_tool("call", {"to": [bob], "topic": "plan the release",
                                                       "mode": "async"}), "call")
                conv = c1["conv"]
                check(c1["seq"] == 1, f"call: {c1}")
                calls = result(await b.call_tool("calls", {}), "calls")
                check([x["id"] for x in calls["calls"]] == [conv], f"calls: {calls}")
                acc = result(await b.call_tool("accept", {"id": conv}), "accept")
                check(acc["seq"] == 2 and acc["state"] == "active", f"accept: {acc}")
                uri = f"formica://conversations/{conv}"
                tpl = await b.list_resource_templates()
                check([t.uri_template for t in tpl.resource_templates]
                      == ["formica://conversations/{id}"], f"templates: {tpl}")
                first = json.loads((await b.read_resource(uri)).contents[0].text)
                check([e["seq"] for e in first["entries"]] == [1, 2], f"conversation read: {first}")
                await b.subscribe_resource(uri)
                sent = result(await a.call_tool("conversation_send",
                                                {"id": conv, "text": "first point"}),
                              "conversation_send")
                check(sent["seq"] == 3 and sent.get("sealed") is True, f"conversation_send: {sent}")
                deadline = time.monotonic() + 15
                while True:
                    left = deadline - time.monotonic()
                    check(left > 0, "no update for the conversation resource")
                    if await asyncio.wait_for(updates.get(), timeout=left) == uri:
                        break
                body = json.loads((await b.read_resource(uri)).contents[0].text)
                check([e["seq"] for e in body["entries"]] == [3]
                      and body["entries"][0].get("sealed") is True
                      and body["entries"][0]["payload"]["text"] == "first point",
                      f"conversation read after the update: {body}")
                hist = result(await b.call_tool("conversation_history",
                                                {"id": conv, "after": 2, "wait": 5}),
                              "conversation_history")
                check([e["seq"] for e in hist["entries"]] == [3] and hist["next"] == 3,
                      f"conversation_history: {hist}")
                lst = result(await a.call_tool("conversation_list", {}), "conversation_list")
                check([x["id"] for x in lst["conversations"]] == [conv], f"list: {lst}")
                left = result(await b.call_tool("conversation_leave",
                                                {"id": conv, "reason": "done"}),
                              "conversation_leave")
                check(left["state"] == "closed" and left["reason"] == "everyone_left",
                      f"conversation_leave: {left}")
                err = error(await a.call_tool("conversation_close", {"id": conv}),
                            "closing a closed conversation")
                check(err["code"] == "conversation_closed", f"conversation_close: {err}")
                await b.unsubscribe_resource(uri)
                c2 = result(await a.call_tool("call", {"to": [bob], "topic": "another",
                                                       "mode": "async"}), "second call")
                dec = result(await b.call_tool("decline", {"id": c2["conv"],
                                                           "reason": "not today"}), "decline")
                check(dec["action"] == "decline" and dec["state"] == "closed",
                      f"decline: {dec}")
                await b.unsubscribe_resource("formica://inbox")

        # The current revision (2026-07-28: discover, no initialize), through the SDK's
        # high-level client: tool calls, and a `subscriptions/listen` stream on the inbox
        # that yields an event when bob's message arrives.
        async with Client(server(keytool, alice_home, url), message_handler=on_other) as c:
            check(c.protocol_version == "2026-07-28",
                  f"the high-level client negotiated {c.protocol_version}")
            me = result(await c.call_tool("whoami", {}), "whoami at 2026-07-28")
            check(me.get("handle") == alice, f"whoami: {me}")
            result(await c.call_tool("contacts_add", {"handle": bob, "level": "message"}),
                   "contacts_add")
            # Everything alice had is read once, so the stream announces only what comes.
            res = await c.read_resource("formica://inbox")
            del res
            async with c.listen(resource_subscriptions=["formica://inbox"]) as sub:
                keytool_cli(keytool, bob_home, url, "send", alice, "hello from the cli")
                event = await asyncio.wait_for(sub.__anext__(), timeout=15)
                check(type(event).__name__ == "ResourceUpdated"
                      and getattr(event, "uri", "") == "formica://inbox", f"listen event: {event!r}")
            # A conversation as a listened resource: bob answers and posts from the command
            # line; the stream names the conversation's resource.
            c3 = result(await c.call_tool("call", {"to": [bob], "topic": "listen",
                                                   "mode": "async"}), "call at 2026-07-28")
            curi = f"formica://conversations/{c3['conv']}"
            keytool_cli(keytool, bob_home, url, "accept", c3["conv"])
            json.loads((await c.read_resource(curi)).contents[0].text)
            async with c.listen(resource_subscriptions=[curi]) as sub:
                keytool_cli(keytool, bob_home, url, "conv", "send", c3["conv"], "heard you")
                event = await asyncio.wait_for(sub.__anext__(), timeout=15)
                check(type(event).__name__ == "ResourceUpdated"
                      and getattr(event, "uri", "") == curi, f"listen event: {event!r}")
            body = json.loads((await c.read_resource(curi)).contents[0].text)
            check([e["payload"]["text"] for e in body["entries"]] == ["heard you"]
                  and all(e.get("sealed") is True for e in body["entries"]),
                  f"conversation read after listen: {body}")
            result(await c.call_tool("contacts_remove", {"handle": bob}), "contacts_remove")
        check(stray == [], f"lines on the servers' stdout that are not MCP: {stray}")

        # A key file encrypted with FORMICA_PASSPHRASE: the server works with the variable,
        # and without it refuses to start (keytool's exit 9 on standard error), printing
        # nothing on standard output, where only MCP messages may go.
        carol_home = os.path.join(root, "carol")
        env = dict(os.environ, FORMICA_PASSPHRASE="correct horse battery staple")
        r = subprocess.run([keytool, "--home", carol_home, "--relay", url, "--json",
                            "register", "@carol"], capture_output=True, text=True,
                           timeout=120, env=env)
        check(r.returncode == 0, f"register carol: {r.stdout}{r.stderr}")
        key_file = os.path.join(carol_home, "identities", "default.json")
        check("correct horse" not in open(key_file).read(), "the passphrase is in the key file")
        params = StdioServerParameters(command=keytool,
                                       args=["--home", carol_home, "--relay", url, "mcp"],
                                       env={"FORMICA_PASSPHRASE": env["FORMICA_PASSPHRASE"],
                                            "PATH": os.environ.get("PATH", "")})
        async with stdio_client(params) as (r2, w2):
            async with ClientSession(r2, w2) as c:
                await c.initialize()
                me = result(await c.call_tool("whoami", {}), "whoami, encrypted key")
                check(me.get("handle", "").startswith("@carol@"), f"whoami: {me}")
                check("correct horse" not in json.dumps(me), "the passphrase in a result")
        no_pass = {k: v for k, v in os.environ.items() if k != "FORMICA_PASSPHRASE"}
        r = subprocess.run([keytool, "--home", carol_home, "--relay", url, "mcp"],
                           input="", capture_output=True, text=True, timeout=30, env=no_pass)
        check(r.returncode == 9 and r.stdout == "",
              f"mcp without the passphrase: exit {r.returncode}, stdout {r.stdout!r}")
        check("FORMICA_PASSPHRASE" in r.stderr, f"no hint on stderr: {r.stderr}")

        # The relay goes away: a wait is an error with a code, never an empty inbox.
        relay_proc.kill()
        relay_proc.wait()
        async with stdio_client(server(keytool, alice_home, url)) as (r3, w3):
            async with ClientSession(r3, w3) as c:
                await c.initialize()
                err = error(await c.call_tool("wait_for_messages", {"timeout_s": 2}),
                            "wait with the relay down")
                check(err["code"] == "keytool.network", f"relay down: {err}")
                err = error(await c.call_tool("inbox", {}), "inbox with the relay down")
                check(err["code"] == "keytool.network", f"relay down: {err}")

        print("mcp_e2e: ok: two identities over stdio at 2025-11-25 and 2026-07-28: tools, "
              "errors with codes, contacts, wait_for_messages, subscribe and listen updates, "
              "sealed payloads, ack, status, profiles and the directory, presence, conversations; "
              "an encrypted key through "
              "FORMICA_PASSPHRASE")
    finally:
        relay_proc.kill()
        relay_proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--keytool", required=True)
    ap.add_argument("--relay", required=True)
    args = ap.parse_args()
    asyncio.run(asyncio.wait_for(main(args.keytool, args.relay), timeout=300))
