#!/usr/bin/env python3
"""Writes the fuzz targets' starting inputs from the spec's test vectors into seeds/<target>/.

The vectors hold the inputs a fuzzer is least likely to find on its own: envelopes with valid
signatures, key logs whose chains and signatures check, request authentication headers, signed
profiles and presence statuses, conversation entries whose hashes link, sealed payloads and key
logs with encryption keys. Seeds
are named by the SHA-1 of their content, as libFuzzer names corpus files, so running this again
writes the same files. It also writes seeds/protocol.dict, a libFuzzer dictionary (`-dict=`) of
the protocol's words: the lower-case string literals of the protocol crate's sources (field
names, types, statuses, actions, error codes) as JSON strings, then relay_http's (and
relay_federation's) record separator and its id references "$0" to "$3". So --check also fails when a word-like literal is added to
or removed from protocol-spec/src: run make_seeds.py again and commit what it writes.
Standard library only; run from anywhere.

    python3 make_seeds.py           # rewrite seeds/ (removing seeds no vector gives any more)
    python3 make_seeds.py --check   # exit 1 if seeds/ differs from what the vectors give (CI)
"""
import hashlib
import json
import re
import pathlib
import shutil
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
VECTORS = HERE.parent / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def compact(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def raw(case):
    """A case's input as bytes: `input` is UTF-8 text, `input_hex` raw bytes."""
    if "input_hex" in case:
        return bytes.fromhex(case["input_hex"])
    return case["input"].encode("utf-8")


OUT = HERE / "seeds"
# Separates the records of one relay_http input (relay_http.rs).
SEP = b"\xffNXT"


def write(target, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def main():
    global OUT
    if sys.argv[1:] == ["--check"]:
        with tempfile.TemporaryDirectory() as tmp:
            OUT = pathlib.Path(tmp)
            generate()
            want, have = files(OUT), files(HERE / "seeds")
        differ = sorted(str(k) for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        if differ:
            shown = ", ".join(differ[:5]) + (", ..." if len(differ) > 5 else "")
            sys.exit(f"seeds/ is out of date with the vectors or the protocol crate's words "
                     f"({len(differ)} files missing, extra or changed: {shown}); "
                     f"run python3 protocol-spec/fuzz/make_seeds.py")
        print(f"seeds/ matches the vectors and the protocol crate's words ({len(want)} files)")
    elif sys.argv[1:]:
        sys.exit(__doc__)
    else:
        shutil.rmtree(OUT, ignore_errors=True)
        generate()


def dictionary():
    """The dictionary's lines: every word-like string literal of protocol-spec/src, quoted as it
    appears in JSON, then relay_http's separator and id references."""
    words = set()
    for src in sorted((HERE.parent / "src").rglob("*.rs")):
        words.update(re.findall(r'"([a-z][a-z0-9_.-]{1,40})"', src.read_text(encoding="utf-8")))
    lines = [f'"\\"{w}\\""' for w in sorted(words)]
    lines.append('"' + "".join(f"\\x{b:02x}" for b in SEP) + '"')
    lines += [f'"\\"${k}\\""' for k in range(4)]
    return "\n".join(lines) + "\n"


def generate():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "protocol.dict").write_text(dictionary(), encoding="utf-8")
    canon = load("canon.json")["cases"]
    valid = load("envelopes_valid.json")["cases"]
    invalid = load("envelopes_invalid.json")["cases"]
    keylogs = load("keylogs.json")
    auth = load("auth.json")
    profiles = load("profiles.json")
    presence = load("presence.json")
    conversations = load("conversations.json")
    sealed = load("sealed.json")

    # parse_envelope: JSON documents and envelopes, accepted and refused.
    for c in canon:
        write("parse_envelope", raw(c))
    for c in valid:
        write("parse_envelope", c["wire"].encode("utf-8"))
    for c in invalid:
        write("parse_envelope", raw(c))
    for c in sealed["valid"] + sealed["unopenable"] + sealed["invalid"]:
        write("parse_envelope", raw(c))

    # keylog: one entry per line; with the key logs of sealed.json, whose `enc` entries publish
    # encryption keys (LOG-16).
    for c in keylogs["valid"] + keylogs["invalid"] + sealed["keylogs_valid"] + sealed["keylogs_invalid"]:
        write("keylog", b"\n".join(compact(e) for e in c["entries"]))
    for a in sealed["agents"]:
        write("keylog", b"\n".join(compact(e) for e in a["log"]))

    # parse_sealed: sealed envelopes that open, that do not (each reason of SEAL-11) and that
    # relays refuse; the payload objects and sealed objects alone; and the valid ones with their
    # plaintext payload in place of the sealed one (without `id`, which would no longer match),
    # which the target seals and opens again.
    for c in sealed["valid"] + sealed["unopenable"] + sealed["invalid"]:
        write("parse_sealed", raw(c))
    for c in sealed["valid"] + sealed["invalid"]:
        payload = json.loads(raw(c))["payload"]
        write("parse_sealed", compact(payload))
        if isinstance(payload.get("sealed"), dict):
            write("parse_sealed", compact(payload["sealed"]))
    for c in sealed["valid"]:
        env = json.loads(raw(c))
        env.pop("id", None)
        env["payload"] = c["opens"][0]["payload"]
        write("parse_sealed", compact(env))

    # request_auth: header values, agent and relay. The vectors give no valid agent header as
    # text (only its signing input, and the standard library cannot sign), but several invalid
    # ones are valid headers presented for another request, and the target signs valid headers
    # of both kinds on every input.
    for group in ("invalid", "relay_valid", "relay_invalid"):
        for c in auth[group]:
            write("request_auth", c["header"].encode("utf-8"))

    # parse_profile: signed profiles, accepted and refused.
    for c in profiles["valid"]:
        write("parse_profile", c["wire"].encode("utf-8"))
    for c in profiles["invalid"]:
        write("parse_profile", raw(c))

    # parse_status: signed presence statuses, accepted and refused.
    for c in presence["valid"]:
        write("parse_status", c["wire"].encode("utf-8"))
    for c in presence["invalid"]:
        write("parse_status", raw(c))

    # parse_entry: conversation entries as served, accepted and refused.
    for c in conversations["entries"]:
        write("parse_entry", c["wire"].encode("utf-8"))
    for c in conversations["entries_invalid"]:
        write("parse_entry", raw(c))

    # parse_batch: what a home relay sends a participant relay (CONVO-13), accepted and refused.
    for c in conversations["batches"] + conversations["batches_invalid"]:
        write("parse_batch", raw(c))

    # directory_query: query strings of GET /v1/directory, as clients and relays send them.
    for q in [
        "capability=code-review",
        "capability=code-review&text=rust+code&limit=5",
        "text=%C4%B0stanbul&min_tier=1",
        "text=zo%C3%AB&cursor=%40alice%40relay-a.test",
        "federated=1&capability=translation&limit=50",
        "capability=Code&limit=0&federated=2",
        "text=%00&cursor=nonsense",
    ]:
        write("directory_query", q.encode("utf-8"))

    # relay_http: an input is up to 16 records separated by SEP; a record's first byte picks the
    # endpoint, signing mode or clock step (see relay_http.rs). Single records first.
    wires = [c["wire"].encode("utf-8") for c in valid]
    for w in wires:
        write("relay_http", b"\x00" + w)
    write("relay_http", b"\x01" + b'{"envelopes":[' + b",".join(wires[:3]) + b"]}")
    for c in invalid:
        write("relay_http", b"\x00" + raw(c))
    for c in keylogs["valid"]:
        write("relay_http", b"\x02" + compact({"entry": c["entries"][0], "pow": {"challenge": "00" * 16, "difficulty": 1, "nonce": 0}}))
        for e in c["entries"]:
            write("relay_http", b"\x03" + compact(e))
    write("relay_http", b"\x04{}")
    # Signing modes 5 (as alice) and 6 (as bob): the vectors' envelopes addressed to the other
    # local agent, so that they pass the contact checks and reach delivery.
    for c in valid:
        env = dict(c["envelope"])
        for mode, other in ((5, "@bob@relay-a.example"), (6, "@alice@relay-a.example")):
            env["to"] = [other]
            write("relay_http", bytes([mode]) + compact(env))
    # Sequences. The target registers @kevin with the first entry of the longest valid key log;
    # the later entries of each log that starts with that entry, posted in order with a minute
    # of the clock between them (the entries are a minute apart), extend it.
    minute = b"\x07" + (60_000).to_bytes(4, "little")
    # (On a tie, the last of the longest, as the target's max_by_key picks.)
    longest = max(reversed(keylogs["valid"]), key=lambda c: len(c["entries"]))["entries"][0]
    for c in keylogs["valid"] + keylogs["invalid"]:
        if len(c["entries"]) > 1 and c["entries"][0] == longest:
            posts = [b"\x03" + compact(e) for e in c["entries"][1:]]
            write("relay_http", SEP.join(sum(([p, minute] for p in posts), [])[:-1]))
    # A message from alice to bob asking for an ack, then bob's ack of it ("$0": the id of the
    # first envelope the input had accepted), then a day passes (mode 7).
    msg = next(c["envelope"] for c in valid if c["envelope"]["type"] == "message")
    ack = next(c["envelope"] for c in valid if c["envelope"]["type"] == "ack")
    ask = dict(msg, to=["@bob@relay-a.example"], ack_by=60_000)
    answer = dict(ack, to=["@alice@relay-a.example"], payload=dict(ack["payload"], msg="$0"))
    day = b"\x07" + (86_400_000).to_bytes(4, "little")
    write("relay_http", SEP.join([b"\x05" + compact(ask), b"\x06" + compact(answer), day]))
    # The same message left unacknowledged: the day makes it time out.
    write("relay_http", SEP.join([b"\x05" + compact(ask), day]))

    # relay_federation: records as in relay_http, the modes of relay_federation.rs: 0 transfer,
    # 1 key log push, 2 handshake (raw bodies, signed by the peer), 3 and 4 envelope fields
    # signed as @rem@192.0.2.1 and as the peer relay, in a transfer; 5 as @bob, posted; 6 clock.
    bob, rem = "@bob@relay-a.example", "@rem@192.0.2.1"
    write("relay_federation", b"\x00" + b'{"envelopes":[' + b",".join(wires[:3]) + b'],"txn":"t1"}')
    for c in invalid[:8]:
        write("relay_federation", b"\x00" + b'{"envelopes":[' + raw(c) + b'],"txn":"t2"}')
    for c in keylogs["valid"][:4]:
        write("relay_federation", b"\x01" + compact({"entries": c["entries"]}))
    write("relay_federation", b"\x02" + compact({"descriptor": {}}))
    for c in valid:
        write("relay_federation", b"\x03" + compact(dict(c["envelope"], to=[bob])))
    # Bob asks @rem for an ack ("$0" is its id); the peer's delivery notice; rem's ack; a day.
    ask_rem = dict(msg, to=[rem], ack_by=60_000)
    receipt = next(c["envelope"] for c in valid if c["envelope"]["type"] == "receipt")
    notice = dict(receipt, to=[bob], payload={"msg": "$0", "recipient": rem, "status": "delivered"})
    rem_ack = dict(ack, to=[bob], payload=dict(ack["payload"], msg="$0"))
    write("relay_federation", SEP.join([b"\x05" + compact(ask_rem), b"\x04" + compact(notice), b"\x03" + compact(rem_ack), b"\x06" + day[1:]]))
    write("relay_federation", SEP.join([b"\x05" + compact(ask_rem), b"\x06" + day[1:]]))


if __name__ == "__main__":
    main()
