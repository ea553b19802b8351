#!/usr/bin/env python3
"""Independent cross-check of Formica's canonical bytes and signing inputs.

What it checks
--------------
a. Canonicalization. Documents from protocol-spec/vectors/canon.json (cases with a
   "canonical" answer), the RFC 8785 reference inputs in protocol-spec/vectors/external/jcs,
   and several thousand random documents from a seeded RNG (deep nesting, integers at the edges
   of +/-(2^53-1), control characters, U+2028/U+2029, Latin-1, private use, astral characters,
   keys whose UTF-16 order differs from their code-point order) are piped in one run through
   `keytool canon --jcs --lines`; every output line must equal, byte for byte,
   rfc8785.dumps(json.loads(line)). Reference inputs with floats must be refused with
   `!float_not_allowed` (the strict profile has no floats) and nothing else may be refused;
   a few documents the strict profile must refuse are checked for their error codes.
b. Envelopes (vectors/envelopes_valid.json): signing input = domain tag, 0x00, RFC 8785 form;
   id = BLAKE3 of it; public key and key id from the seed; the signature verifies; the wire form
   without id and sig canonicalizes to the same bytes; keytool prints the same input and id.
c. Key logs (vectors/keylogs.json): for the valid logs, entry hashes, the prev chain, the head,
   every entry signature under the key its signer names, keytool's keylog signing input, and
   the proofs of possession (LOG-2): exactly the proofs the op needs (`key_sig` on rotate and
   recover, `recovery_sig` with `recovery`), each verifying with the key it proves over the
   keylog-pop input, and none verifying under the keylog tag. For the invalid logs refused with
   bad_signature, at least one entry signature or proof must fail to verify here too.
d. Proof-of-work (vectors/pow.json): prefix, hash, leading zero bits, and the ok/refused result.
e. Authenticated requests (vectors/auth.json valid and relay_valid): signing inputs rebuilt
   from the case fields, header fields, and signatures.
f. Profiles (vectors/profiles.json): for the valid profiles, signing input = profile tag, 0x00,
   RFC 8785 form of `profile`; public key and key id from the seed (the key id is the profile's
   `key`); the signature verifies and is the deterministic Ed25519 one; the wire form is the
   RFC 8785 form of the profile with `sig`. For the invalid profiles refused with bad_signature,
   the signature must fail to verify here too (with the case's key, over the profile tag and the
   RFC 8785 form of the input without `sig`); for unknown_key, the case's key is not the one the
   profile names.
g. Presence statuses (vectors/presence.json): the same for the valid statuses over the presence
   tag (the key id is the status's `key`, and `status` is never `offline`); the invalid ones
   refused with bad_signature do not verify here either, and for unknown_key the case's key is
   not the one the status names. The statuses refused by parsing alone are checked for the
   rules Python can see without the Rust code: `offline` and words out of the list refused with
   invalid_field at `status`, `expires` not after `ts` at `expires`, a note over 280 characters
   at `note`, and `v` other than 1 with unsupported_version.
h. Conversations (vectors/conversations.json): the valid conversation envelopes as in b.; every
   served entry's hash = BLAKE3("formica/v1/conversation" 0x00 || RFC 8785 form of the entry
   without `hash`), its wire form, the `prev` chain from 64 zeros, `seq` 1..n, `conv` = the id of
   the call of entry 1 recomputed here, each envelope's id recomputed from its signing input and
   its signature verified with the case's key, and `conv` of each later envelope; every entry of
   `entries_invalid` read by a reader written here from CONVO-4 (members in the protocol crate's
   order, envelope ids recomputed, the hash checked last) is refused with the vector's code, and
   every valid entry is accepted by it; every batch of POST /v1/federation/conversation
   (CONVO-13) in `batches` is read by a batch reader written here, and every one in
   `batches_invalid` refused with the vector's code at its field.
i. Sealed payloads (vectors/sealed.json, SPEC.md section 20 and LOG-16) and RFC 9180's test
   vector for the suite (vectors/external/rfc9180, A.2.1) through pyhpke: the RFC's key pairs
   from ikmR and ikmE, Encap with the fixed ephemeral key, the six encryptions sealed by the sender
   context and opened by the recipient context, their nonces, and the exports. Every key log of
   sealed.json is verified by a key log verifier written here from LOG-10 (which also accepts
   every valid log of keylogs.json) with the `enc` op: members `enc` and `expires` (ts < expires
   <= ts + 366 days), signed by the current key, ending the previous encryption key, as revoke,
   recover and move do and rotate does not; encryption key ids (BLAKE3 of the enc-key-id tag and
   the key), and each agent's public keys from its secrets. For `valid`: the routing aad computed
   here, the padded length (Padmé with a minimum of 256, also against the `padding` table), every
   sealed key opened with pyhpke (base mode, the sealed-key info, the aad) to one content key, the
   content ciphertext decrypted with ChaCha20-Poly1305 (cryptography) and unpadded to JCS of the
   payload, and re-encrypted to the same bytes; the sender's signature. For `unopenable`: the
   reason found by opening here (no sealed key for the recipient, key id unknown, expired or not
   valid at the envelope's ts, a tag that fails, padding, a plaintext that is not the canonical
   form of a valid payload of the type). For `invalid`: the code and field of a reader of the
   sealed structure written here (SEAL-2, SEAL-4, SEAL-6: suite, keys, hex lengths, canonical
   base64url, ct a size bucket and a tag, addressing in the order of `to`). `keylogs_valid`: heads,
   each encryption key's validity at the queried times and the current key; `keylogs_invalid`:
   the code of the verifier written here.

Why it is independent
---------------------
Nothing here is shared with the project's Rust code: JSON parsing is Python's json module, the
RFC 8785 form comes from Trail of Bits' `rfc8785` package (pure Python), Ed25519 from
`cryptography` (OpenSSL), BLAKE3 from the `blake3` package (the BLAKE3 authors' bindings; they
compile the upstream BLAKE3 implementation, which is independent of this project's code but is
the same upstream the Rust side depends on), HPKE from `pyhpke` (pure Python over
`cryptography`; the Rust side uses the `hpke` crate), ChaCha20-Poly1305 and X25519 from
`cryptography`. Signing inputs, ids, key ids and hashes are rebuilt
here from the specification's description, never taken from Rust output. The only contact with
the Rust code is the keytool binary, treated as a black box whose answers are compared with ours.

Usage (from the repository root):
    python3 tests/python/crosscheck.py --keytool target/debug/keytool [--seed N] [--count N]
The keytool path may also come from the environment variable KEYTOOL. The last line printed
is `N passed, M failed`; the exit status is 1 if anything failed or if fewer than
MIN_CANON_COMPARISONS canonicalization comparisons ran.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import blake3
import rfc8785
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "protocol-spec" / "vectors"
JCS = VECTORS / "external" / "jcs"

DEFAULT_SEED = 20251124
DEFAULT_COUNT = 4000
MIN_CANON_COMPARISONS = 3000
MAX_DEPTH = 6
SAFE_MAX = 2**53 - 1
MAX_LINE_BYTES = 60000  # below the strict profile's default 65536-byte limit

TAG_KEY_ID = b"formica/v1/key-id\x00"
TAG_KEYLOG = b"formica/v1/keylog\x00"
TAG_KEYLOG_POP = b"formica/v1/keylog-pop\x00"
TAG_POW = b"formica/v1/pow\x00"
TAG_REQUEST = b"formica/v1/request\x00"
TAG_RELAY_REQUEST = b"formica/v1/relay-request\x00"
TAG_PROFILE = b"formica/v1/profile\x00"
TAG_PRESENCE = b"formica/v1/presence\x00"
TAG_ENVELOPE = b"formica/v1/envelope\x00"
TAG_CONVERSATION = b"formica/v1/conversation\x00"


# --------------------------------------------------------------------------------------------
# Bookkeeping


class Results:
    """Counts passes and failures; keeps each failure's one-line reason and its details."""

    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[tuple[str, str]] = []
        self.canon_comparisons = 0

    def check(self, ok: bool, reason: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append((reason, detail))
        return ok

    def equal(self, what: str, got, want) -> bool:
        return self.check(got == want, f"{what}: mismatch", f"  got:  {got!r}\n  want: {want!r}")

    def report(self) -> None:
        for i, (reason, detail) in enumerate(self.failures):
            if i < 10:
                print(f"FAIL {reason}")
                if detail:
                    print(detail)
            elif i < 60:
                print(f"FAIL {reason}"[:200])
            else:
                print(f"... and {len(self.failures) - i} more failures")
                break


def hexs(b: bytes) -> str:
    return b.hex()


def jcs(value) -> bytes:
    return rfc8785.dumps(value)


def key_id(public_key: bytes) -> str:
    """Key id: the first 16 bytes of BLAKE3("formica/v1/key-id" 0x00 || public key), in hex."""
    return blake3.blake3(TAG_KEY_ID + public_key).digest()[:16].hex()


def public_from_seed(seed_hex: str) -> bytes:
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def load(name: str) -> dict:
    with open(VECTORS / name, encoding="utf-8") as f:
        return json.load(f)


def run_keytool(keytool: str, args: list[str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([keytool, *args], input=stdin, capture_output=True, timeout=300, check=False)


def keytool_text(keytool: str, args: list[str], stdin: bytes) -> str:
    """keytool's standard output, stripped; on failure, its exit status and standard error."""
    p = run_keytool(keytool, args, stdin)
    if p.returncode != 0:
        return f"<keytool {' '.join(args)} exited {p.returncode}: {p.stderr.decode('utf-8', 'replace').strip()}>"
    return p.stdout.decode("utf-8", "replace").strip()


# --------------------------------------------------------------------------------------------
# a. Canonicalization


def has_fraction_or_exponent(text: str) -> bool:
    """True if a number token outside strings contains '.', 'e' or 'E'."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "-" or c.isdigit():
            j = i
            while j < n and text[j] in "0123456789+-.eE":
                j += 1
            if any(ch in text[i:j] for ch in ".eE"):
                return True
            i = j
        else:
            i += 1
    return False


def one_line(text: str) -> str:
    """JSON text on one line. Raw CR/LF cannot occur inside a valid JSON string, so in valid
    JSON they are insignificant whitespace and replacing them with spaces changes nothing."""
    return text.replace("\r", " ").replace("\n", " ")


# Characters for random strings, by class: (weight, generator). Never a surrogate code point.
def _char_classes():
    def span(lo, hi):
        return lambda rng: chr(rng.randint(lo, hi))

    def pick(*cps):
        return lambda rng: chr(rng.choice(cps))

    return [
        (30, span(0x20, 0x7E)),  # printable ASCII, incl. '"', '\\' and '/'
        (6, pick(0x22, 0x5C, 0x2F)),  # the characters that need escaping (and '/', which must not)
        (8, span(0x00, 0x1F)),  # C0 controls
        (2, pick(0x7F)),  # DEL
        (3, pick(0x2028, 0x2029)),  # line and paragraph separators
        (8, span(0x80, 0xFF)),  # Latin-1 supplement, incl. C1 controls
        (6, span(0xE000, 0xF8FF)),  # BMP private use
        (4, span(0xF900, 0xFFFF)),  # the top of the BMP, above the surrogates
        (6, span(0x1F300, 0x1FAFF)),  # emoji
        (4, span(0x10000, 0x10FFFF)),  # any astral code point
        (2, pick(0x10000, 0x10FFFF, 0xFFFF, 0xFFFD, 0xD7FF, 0xE000)),  # edges
    ]


CHAR_CLASSES = _char_classes()
CHAR_WEIGHTS = [w for w, _ in CHAR_CLASSES]


def rand_string(rng: random.Random, max_len: int = 10) -> str:
    n = rng.choice([0, 1, 1, 2, 3]) if rng.random() < 0.3 else rng.randint(0, max_len)
    gens = rng.choices(CHAR_CLASSES, weights=CHAR_WEIGHTS, k=n)
    return "".join(g(rng) for _, g in gens)


def rand_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.35:
        return rng.randint(-SAFE_MAX, SAFE_MAX)
    if r < 0.55:
        return rng.choice([SAFE_MAX, -SAFE_MAX, SAFE_MAX - 1, -SAFE_MAX + 1, 0, 1, -1,
                           2**52, -(2**52), 2**31 - 1, -(2**31), 2**32, 10**15, -(10**15) - 1])
    if r < 0.75:
        return rng.choice([1, -1]) * (SAFE_MAX - rng.randint(0, 10**6))
    return rng.randint(-1000, 1000)


def rand_keys(rng: random.Random, n: int) -> list[str]:
    """n distinct keys. Some objects deliberately mix keys starting in U+E000-U+FFFF with keys
    starting with an astral character: UTF-16 order puts the astral ones (surrogates D800-DFFF)
    first, code-point and UTF-8 order put them last. Some keys extend others (prefix order)."""
    keys: list[str] = []
    mixed = rng.random() < 0.35
    tries = 0
    while len(keys) < n and tries < 10 * n + 10:
        tries += 1
        r = rng.random()
        if mixed and r < 0.4:
            k = chr(rng.randint(0xE000, 0xFFFF)) + rand_string(rng, 3)
        elif mixed and r < 0.8:
            k = chr(rng.choice([0x10000, 0x10FFFF, rng.randint(0x10000, 0x10FFFF),
                                rng.randint(0x1F300, 0x1FAFF)])) + rand_string(rng, 3)
        elif keys and r < 0.9:
            k = rng.choice(keys) + rand_string(rng, 2)
        else:
            k = rand_string(rng, 8)
        if k not in keys:
            keys.append(k)
    return keys


def rand_value(rng: random.Random, depth: int, budget: list[int], stats: dict) -> object:
    """A random JSON value; containers count as one nesting level each, up to MAX_DEPTH."""
    stats["max_depth"] = max(stats["max_depth"], depth)
    budget[0] -= 1
    container_p = 0.55 if depth < 2 else 0.4
    if depth < MAX_DEPTH and budget[0] > 0 and rng.random() < container_p:
        n = rng.randint(0, 6)
        if rng.random() < 0.5:
            return {k: rand_value(rng, depth + 1, budget, stats) for k in rand_keys(rng, n)}
        return [rand_value(rng, depth + 1, budget, stats) for _ in range(n)]
    r = rng.random()
    if r < 0.35:
        return rand_int(rng)
    if r < 0.75:
        return rand_string(rng, 12)
    if r < 0.9:
        return rng.choice([True, False])
    return None


def deep_value(rng: random.Random, stats: dict) -> object:
    """A value that reaches exactly MAX_DEPTH levels of nesting."""
    stats["max_depth"] = max(stats["max_depth"], MAX_DEPTH)
    v: object = rand_value(rng, MAX_DEPTH, [1], stats)
    for _ in range(MAX_DEPTH):
        if rng.random() < 0.5:
            keys = rand_keys(rng, rng.randint(1, 4))
            v = {k: (v if i == 0 else rand_int(rng)) for i, k in enumerate(keys)}
        else:
            v = [rand_string(rng), v, rand_int(rng)]
    return v


def utf16_order_matters(value) -> bool:
    """True if some object in value sorts its keys differently by UTF-16 than by code point."""
    if isinstance(value, dict):
        keys = list(value)
        if sorted(keys) != sorted(keys, key=lambda k: k.encode("utf-16-be")):
            return True
        return any(utf16_order_matters(v) for v in value.values())
    if isinstance(value, list):
        return any(utf16_order_matters(v) for v in value)
    return False


def random_documents(seed: int, count: int) -> tuple[list[bytes], dict]:
    rng = random.Random(seed)
    stats = {"max_depth": 0, "ascii": 0, "utf8": 0, "utf16_order": 0}
    lines: list[bytes] = []
    separators = [(",", ":"), (", ", ": "), (" ,\t", " :\t")]
    while len(lines) < count:
        value = deep_value(rng, stats) if rng.random() < 0.1 else rand_value(rng, 0, [rng.randint(1, 80)], stats)
        ensure_ascii = rng.random() < 0.5
        text = json.dumps(value, ensure_ascii=ensure_ascii, separators=rng.choice(separators))
        if rng.random() < 0.1:
            text = rng.choice([" ", "\t", " \t "]) + text + rng.choice(["", " ", "\t", "\r"])
        line = text.encode("utf-8")
        assert b"\n" not in line, "json.dumps wrote a raw newline"
        if len(line) > MAX_LINE_BYTES:
            continue
        stats["ascii" if ensure_ascii else "utf8"] += 1
        stats["utf16_order"] += utf16_order_matters(value)
        lines.append(line)
    return lines, stats


# Lines the strict profile must refuse, with the expected code.
MUST_REFUSE = [
    ('{"a":1,"a":2}', "duplicate_key"),
    ('{"x":[{"k":true,"k":false}]}', "duplicate_key"),
    ('{"a":1,"\\u0061":2}', "duplicate_key"),
    ("1.0", "float_not_allowed"),
    ('{"n":[1e2]}', "float_not_allowed"),
    ("-0.5", "float_not_allowed"),
    ("9007199254740992", "integer_out_of_range"),
    ("-9007199254740992", "integer_out_of_range"),
    ('"\\ud800"', "lone_surrogate"),
    ('{"\\udc00":1}', "lone_surrogate"),
    ('"\\ud83dx"', "lone_surrogate"),
]


def check_canonicalization(res: Results, keytool: str | None, seed: int, count: int) -> None:
    print("== a. canonicalization: keytool canon --jcs --lines vs rfc8785")
    # Each entry: (label, line bytes, expected output line bytes or None, expected refusal code or None)
    docs: list[tuple[str, bytes, bytes | None, str | None]] = []

    canon_cases = load("canon.json")["cases"]
    n_vec = 0
    for i, case in enumerate(canon_cases):
        if "canonical" not in case:
            continue
        text = case["input"] if "input" in case else bytes.fromhex(case["input_hex"]).decode("utf-8")
        expected = jcs(json.loads(text))
        res.equal(f"canon.json case {i} ({case.get('comment')}): rfc8785 vs vector", expected,
                  case["canonical"].encode("utf-8"))
        docs.append((f"canon.json case {i} ({case.get('comment')})", one_line(text).encode("utf-8"), expected, None))
        n_vec += 1

    n_jcs_ok = n_jcs_float = 0
    for path in sorted((JCS / "input").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        reference = (JCS / "output" / path.name).read_bytes().rstrip(b"\n")
        expected = jcs(json.loads(text))
        res.equal(f"external/jcs {path.name}: rfc8785 vs reference output", expected, reference)
        if has_fraction_or_exponent(text):
            docs.append((f"external/jcs {path.name} (has floats)", one_line(text).encode("utf-8"), None,
                         "float_not_allowed"))
            n_jcs_float += 1
        else:
            docs.append((f"external/jcs {path.name}", one_line(text).encode("utf-8"), expected, None))
            n_jcs_ok += 1

    for text, code in MUST_REFUSE:
        docs.append((f"must refuse {text}", text.encode("utf-8"), None, code))

    random_lines, stats = random_documents(seed, count)
    for k, line in enumerate(random_lines):
        docs.append((f"random document #{k} (seed {seed})", line, jcs(json.loads(line)), None))

    print(f"   seed {seed}: {len(random_lines)} random documents (max depth {stats['max_depth']}, "
          f"{stats['ascii']} ensure_ascii, {stats['utf8']} raw UTF-8, {stats['utf16_order']} where UTF-16 key "
          f"order differs from code-point order); {n_vec} canon.json cases; "
          f"external/jcs: {n_jcs_ok} accepted, {n_jcs_float} with floats; {len(MUST_REFUSE)} refusals")

    if keytool is None:
        res.check(False, "keytool not found: pass --keytool or set KEYTOOL (build: cargo build -p keytool)")
        return
    proc = run_keytool(keytool, ["canon", "--jcs", "--lines"], b"".join(d[1] + b"\n" for d in docs))
    if not res.check(proc.returncode == 0, f"keytool canon --jcs --lines exited {proc.returncode}",
                     "  stderr: " + proc.stderr.decode("utf-8", "replace")[:2000]):
        return
    out = proc.stdout.split(b"\n")
    if out and out[-1] == b"":
        out.pop()
    if not res.check(len(out) == len(docs), f"keytool printed {len(out)} lines for {len(docs)} documents"):
        return

    for (label, line, expected, code), got in zip(docs, out):
        detail = f"  input:   {line!r}\n  keytool: {got!r}\n  "
        if code is None:
            res.canon_comparisons += 1
            res.check(got == expected, f"{label}: keytool {got[:60]!r}... != rfc8785 {expected[:60]!r}...",
                      detail + f"rfc8785: {expected!r}")
        else:
            res.check(got == b"!" + code.encode(), f"{label}: expected !{code}, keytool said {got[:60]!r}",
                      detail + f"want:    b'!{code}'")


# --------------------------------------------------------------------------------------------
# b. Envelopes


def header_params(header: str, scheme: str) -> dict[str, str] | None:
    """Parse 'Scheme k=v,k=v,...' into a dict, or None if the scheme differs."""
    prefix = scheme + " "
    if not header.startswith(prefix):
        return None
    params = {}
    for part in header[len(prefix):].split(","):
        k, _, v = part.partition("=")
        params[k] = v
    return params


def check_envelope_case(res: Results, keytool: str | None, name: str, case: dict) -> None:
    """One case of envelopes_valid.json (or of conversations.json `valid`)."""
    signing_input = case["domain"].encode("ascii") + b"\x00" + jcs(case["envelope"])
    res.equal(f"{name}: signing input", hexs(signing_input), case["signing_input_hex"])
    res.equal(f"{name}: id = BLAKE3(signing input)", blake3.blake3(signing_input).hexdigest(), case["id"])

    public = public_from_seed(case["seed_hex"])
    res.equal(f"{name}: public key from seed", hexs(public), case["public_key"])
    res.equal(f"{name}: key id of public key", key_id(public), case["key_id"])
    res.equal(f"{name}: envelope key", case["envelope"].get("key"), case["key_id"])
    sig = bytes.fromhex(case["sig"])
    res.check(verifies(bytes.fromhex(case["public_key"]), sig, signing_input),
              f"{name}: signature does not verify over the signing input")
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["seed_hex"]))
    res.equal(f"{name}: deterministic Ed25519 signature", hexs(private.sign(signing_input)), case["sig"])

    wire = json.loads(case["wire"])
    res.equal(f"{name}: wire is canonical", jcs(wire), case["wire"].encode("utf-8"))
    res.equal(f"{name}: wire id and sig", (wire.get("id"), wire.get("sig")), (case["id"], case["sig"]))
    stripped = {k: v for k, v in wire.items() if k not in ("id", "sig")}
    res.equal(f"{name}: wire without id and sig", jcs(stripped), jcs(case["envelope"]))

    if keytool is not None:
        wire_bytes = case["wire"].encode("utf-8")
        res.equal(f"{name}: keytool canon --hex of wire", keytool_text(keytool, ["canon", "--hex"], wire_bytes),
                  hexs(signing_input))
        res.equal(f"{name}: keytool id of wire", keytool_text(keytool, ["id"], wire_bytes),
                  blake3.blake3(signing_input).hexdigest())


def check_envelopes(res: Results, keytool: str | None) -> None:
    print("== b. envelopes_valid.json")
    for i, case in enumerate(load("envelopes_valid.json")["cases"]):
        check_envelope_case(res, keytool, f"envelope {i} ({case['comment'][:50]})", case)


# --------------------------------------------------------------------------------------------
# c. Key logs


PROOF_MEMBERS = ("key_sig", "recovery_sig")


def proofs_needed(entry: dict) -> dict[str, str]:
    """The proofs of possession an entry must carry (LOG-1, LOG-2): proof member -> key member."""
    needed = {}
    if entry.get("op") in ("rotate", "recover"):
        needed["key_sig"] = "key"
    if entry.get("op") in ("register", "recover") and "recovery" in entry:
        needed["recovery_sig"] = "recovery"
    return needed


def proof_input(entry: dict) -> bytes:
    """LOG-2: the keylog-pop tag, 0x00, then the entry without sig, key_sig and recovery_sig."""
    return TAG_KEYLOG_POP + jcs({k: v for k, v in entry.items() if k not in ("sig", *PROOF_MEMBERS)})


def check_proofs(res: Results, ename: str, entry: dict) -> None:
    needed = proofs_needed(entry)
    res.equal(f"{ename}: proof members", sorted(m for m in PROOF_MEMBERS if m in entry), sorted(needed))
    pop_input = proof_input(entry)
    for proof, key_member in needed.items():
        if proof not in entry:
            continue
        public = bytes.fromhex(entry[key_member])
        sig = bytes.fromhex(entry[proof])
        res.check(verifies(public, sig, pop_input), f"{ename}: {proof} does not verify with `{key_member}`")
        res.check(not verifies(public, sig, TAG_KEYLOG + pop_input[len(TAG_KEYLOG_POP):]),
                  f"{ename}: {proof} also verifies under the keylog tag (SIG-1)")


def all_signatures_verify(entries: list) -> bool:
    """Whether every entry signature (by the key its signer names) and every proof verifies."""
    known: dict[str, bytes] = {}  # key id -> public key, for keys introduced by earlier entries
    for entry in entries:
        if entry.get("op") == "register":
            signer = bytes.fromhex(entry["key"])
        else:
            signer = known.get(entry.get("signer"))
        body = {k: v for k, v in entry.items() if k != "sig"}
        if signer is None or not verifies(signer, bytes.fromhex(entry["sig"]), TAG_KEYLOG + jcs(body)):
            return False
        for proof, key_member in proofs_needed(entry).items():
            if proof not in entry or not verifies(bytes.fromhex(entry[key_member]), bytes.fromhex(entry[proof]),
                                                  proof_input(entry)):
                return False
        for field in ("key", "recovery"):
            if field in entry:
                known[key_id(bytes.fromhex(entry[field]))] = bytes.fromhex(entry[field])
    return True


def check_keylogs(res: Results, keytool: str | None) -> None:
    print("== c. keylogs.json (valid, and invalid with bad_signature)")
    file = load("keylogs.json")
    for case in file["invalid"]:
        if case["error"] == "bad_signature":
            res.check(not all_signatures_verify(case["entries"]),
                      f"invalid keylog ({case['comment'][:60]}): every signature and proof verifies here")
    for li, log in enumerate(file["valid"]):
        name = f"keylog {li} ({log['comment'][:50]})"
        known: dict[str, bytes] = {}  # key id -> public key, for keys introduced so far
        prev_hash = None
        for ei, entry in enumerate(log["entries"]):
            ename = f"{name} entry {ei} ({entry.get('op')})"
            body = {k: v for k, v in entry.items() if k != "sig"}
            signing_input = TAG_KEYLOG + jcs(body)
            entry_hash = blake3.blake3(signing_input).hexdigest()
            res.equal(f"{ename}: prev", entry.get("prev"), prev_hash)

            if entry.get("op") == "register":
                signer_key = bytes.fromhex(entry["key"])
                res.equal(f"{ename}: register is signed by its own key", entry.get("signer"), key_id(signer_key))
            else:
                signer_key = known.get(entry.get("signer"))
                res.check(signer_key is not None, f"{ename}: signer {entry.get('signer')} not introduced earlier")
            if signer_key is not None:
                res.check(verifies(signer_key, bytes.fromhex(entry["sig"]), signing_input),
                          f"{ename}: signature does not verify with the signer's key")
            check_proofs(res, ename, entry)

            if keytool is not None:
                res.equal(f"{ename}: keytool canon --domain keylog",
                          keytool_text(keytool, ["canon", "--domain", "keylog", "--hex"], jcs(entry)),
                          hexs(signing_input))

            for field in ("key", "recovery"):
                if field in entry:
                    public = bytes.fromhex(entry[field])
                    known[key_id(public)] = public
            prev_hash = entry_hash
        res.equal(f"{name}: head", prev_hash, log["head"])


# --------------------------------------------------------------------------------------------
# d. Proof-of-work


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        bits += 8 - byte.bit_length()
        break
    return bits


def check_pow(res: Results) -> None:
    print("== d. pow.json")
    for i, case in enumerate(load("pow.json")["cases"]):
        name = f"pow {i} ({case['comment'][:50]})"
        committed = {k: case[k] for k in ("challenge", "difficulty", "handle", "key", "relay")}
        prefix = TAG_POW + jcs(committed)
        res.equal(f"{name}: prefix", hexs(prefix), case["prefix_hex"])
        digest = blake3.blake3(prefix + case["nonce"].to_bytes(8, "little")).digest()
        res.equal(f"{name}: hash", hexs(digest), case["hash_hex"])
        zero_bits = leading_zero_bits(digest)
        res.equal(f"{name}: zero bits", zero_bits, case["zero_bits"])
        ok = zero_bits >= case["difficulty"] and case["difficulty"] >= case["required"]
        res.equal(f"{name}: result", "ok" if ok else "pow_insufficient", case["result"])


# --------------------------------------------------------------------------------------------
# e. Authenticated requests


def check_auth(res: Results) -> None:
    print("== e. auth.json (valid, relay_valid)")
    vectors = load("auth.json")
    for i, case in enumerate(vectors["valid"]):
        name = f"auth valid {i} ({case['comment'][:50]})"
        public = bytes.fromhex(case["public_key"])
        res.equal(f"{name}: public key from seed", public, public_from_seed(case["seed_hex"]))
        digest = blake3.blake3(case["body"].encode("utf-8")).hexdigest()
        res.equal(f"{name}: body digest", digest, case["body_digest"])
        kid = key_id(public)
        obj = {"aud": case["aud"], "body": digest, "handle": case["handle"], "key": kid,
               "method": case["method"], "nonce": case["nonce"], "path": case["path"], "ts": case["ts"]}
        signing_input = TAG_REQUEST + jcs(obj)
        res.equal(f"{name}: signing input", hexs(signing_input), case["signing_input_hex"])
        params = header_params(case["header"], "Formica")
        if not res.check(params is not None, f"{name}: header scheme is not 'Formica'", case["header"]):
            continue
        res.equal(f"{name}: header fields", {k: params.get(k) for k in ("handle", "key", "ts", "nonce")},
                  {"handle": case["handle"], "key": kid, "ts": str(case["ts"]), "nonce": case["nonce"]})
        res.check(verifies(public, bytes.fromhex(params.get("sig", "")), signing_input),
                  f"{name}: header sig does not verify over the signing input")

    for i, case in enumerate(vectors["relay_valid"]):
        name = f"auth relay_valid {i} ({case['comment'][:50]})"
        public = bytes.fromhex(case["public_key"])
        res.equal(f"{name}: public key from seed", public, public_from_seed(case["seed_hex"]))
        kid = key_id(public)
        obj = {"body": blake3.blake3(case["body"].encode("utf-8")).hexdigest(), "dest": case["dest"],
               "key": kid, "method": case["method"], "nonce": case["nonce"], "origin": case["origin"],
               "path": case["path"], "ts": case["ts"]}
        signing_input = TAG_RELAY_REQUEST + jcs(obj)
        res.equal(f"{name}: signing input", hexs(signing_input), case["signing_input_hex"])
        params = header_params(case["header"], "Formica-Relay")
        if not res.check(params is not None, f"{name}: header scheme is not 'Formica-Relay'", case["header"]):
            continue
        res.equal(f"{name}: header fields", {k: params.get(k) for k in ("origin", "dest", "key", "ts", "nonce")},
                  {"origin": case["origin"], "dest": case["dest"], "key": kid, "ts": str(case["ts"]),
                   "nonce": case["nonce"]})
        res.check(verifies(public, bytes.fromhex(params.get("sig", "")), signing_input),
                  f"{name}: header sig does not verify over the signing input")


# --------------------------------------------------------------------------------------------
# f. Profiles


def check_profiles(res: Results) -> None:
    print("== f. profiles.json (valid, and invalid with bad_signature or unknown_key)")
    vectors = load("profiles.json")
    for i, case in enumerate(vectors["valid"]):
        name = f"profile valid {i} ({case['comment'][:50]})"
        profile = case["profile"]
        res.check("sig" not in profile, f"{name}: `profile` carries a sig")
        signing_input = TAG_PROFILE + jcs(profile)
        res.equal(f"{name}: signing input", hexs(signing_input), case["signing_input_hex"])
        public = public_from_seed(case["seed_hex"])
        res.equal(f"{name}: public key from seed", hexs(public), case["public_key"])
        res.equal(f"{name}: key id of public key", key_id(public), case["key_id"])
        res.equal(f"{name}: profile key", profile.get("key"), case["key_id"])
        res.check(verifies(public, bytes.fromhex(case["sig"]), signing_input),
                  f"{name}: signature does not verify over the signing input")
        res.check(not verifies(public, bytes.fromhex(case["sig"]), TAG_REQUEST + jcs(profile)),
                  f"{name}: signature also verifies under another tag (SIG-1)")
        private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["seed_hex"]))
        res.equal(f"{name}: deterministic Ed25519 signature", hexs(private.sign(signing_input)), case["sig"])
        res.equal(f"{name}: wire = RFC 8785 form of the profile with sig", jcs(dict(profile, sig=case["sig"])),
                  case["wire"].encode("utf-8"))
        wire = json.loads(case["wire"])
        res.equal(f"{name}: wire without sig", jcs({k: v for k, v in wire.items() if k != "sig"}), jcs(profile))
    n_sig = 0
    for i, case in enumerate(vectors["invalid"]):
        if "public_key" not in case:
            continue
        name = f"profile invalid {i} ({case['comment'][:50]})"
        public = bytes.fromhex(case["public_key"])
        doc = json.loads(case["input"])
        if case["error"] == "unknown_key":
            res.check(doc.get("key") != key_id(public), f"{name}: the key is the one the profile names")
            continue
        res.equal(f"{name}: error", case["error"], "bad_signature")
        body = {k: v for k, v in doc.items() if k != "sig"}
        res.check(not verifies(public, bytes.fromhex(doc["sig"]), TAG_PROFILE + jcs(body)),
                  f"{name}: the signature verifies here")
        n_sig += 1
    res.check(n_sig >= 3, f"only {n_sig} invalid profiles with bad_signature")


# --------------------------------------------------------------------------------------------
# g. Presence statuses

STATUS_WORDS = ("available", "busy", "away")


def status_rule_broken(doc) -> tuple[str, str] | None:
    """The first PRES-2 rule this parsed status breaks that is checked here, as (error, field);
    None when none of them is. Members are read in PRES-2's order, as the relay reads them."""
    if not isinstance(doc, dict):
        return None
    v = doc.get("v")
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0 and v != 1:
        return ("unsupported_version", "")
    ts, expires = doc.get("ts"), doc.get("expires")
    if all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= SAFE_MAX for x in (ts, expires)):
        if expires <= ts:
            return ("invalid_field", "expires")
    st = doc.get("status")
    if isinstance(st, str) and st not in STATUS_WORDS:
        return ("invalid_field", "status")
    note = doc.get("note")
    if isinstance(note, str) and len(note) > 280:  # Python counts code points, as PRES-2 does
        return ("invalid_field", "note")
    return None


def check_presence(res: Results) -> None:
    print("== g. presence.json (valid, and invalid with bad_signature, unknown_key or a PRES-2 rule)")
    vectors = load("presence.json")
    words = set()
    for i, case in enumerate(vectors["valid"]):
        name = f"status valid {i} ({case['comment'][:50]})"
        status = case["status"]
        res.check("sig" not in status, f"{name}: `status` carries a sig")
        res.check(status.get("status") in STATUS_WORDS, f"{name}: status {status.get('status')!r} is not signable")
        res.check(status_rule_broken(status) is None, f"{name}: breaks {status_rule_broken(status)}")
        words.add(status.get("status"))
        signing_input = TAG_PRESENCE + jcs(status)
        res.equal(f"{name}: signing input", hexs(signing_input), case["signing_input_hex"])
        public = public_from_seed(case["seed_hex"])
        res.equal(f"{name}: public key from seed", hexs(public), case["public_key"])
        res.equal(f"{name}: key id of public key", key_id(public), case["key_id"])
        res.equal(f"{name}: status key", status.get("key"), case["key_id"])
        res.check(verifies(public, bytes.fromhex(case["sig"]), signing_input),
                  f"{name}: signature does not verify over the signing input")
        res.check(not verifies(public, bytes.fromhex(case["sig"]), TAG_PROFILE + jcs(status)),
                  f"{name}: signature also verifies under the profile tag (SIG-1)")
        private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(case["seed_hex"]))
        res.equal(f"{name}: deterministic Ed25519 signature", hexs(private.sign(signing_input)), case["sig"])
        res.equal(f"{name}: wire = RFC 8785 form of the status with sig", jcs(dict(status, sig=case["sig"])),
                  case["wire"].encode("utf-8"))
    res.equal("presence.json: the statuses of the valid cases", sorted(words), sorted(STATUS_WORDS))
    n_sig = n_rule = 0
    for i, case in enumerate(vectors["invalid"]):
        name = f"status invalid {i} ({case['comment'][:50]})"
        if "public_key" not in case:
            try:
                doc = json.loads(case["input"])
            except ValueError:
                continue
            broken = status_rule_broken(doc)
            if broken is not None:
                res.equal(f"{name}: error and field", (case["error"], case.get("field", "")), broken)
                n_rule += 1
            continue
        public = bytes.fromhex(case["public_key"])
        doc = json.loads(case["input"])
        if case["error"] == "unknown_key":
            res.check(doc.get("key") != key_id(public), f"{name}: the key is the one the status names")
            continue
        res.equal(f"{name}: error", case["error"], "bad_signature")
        body = {k: v for k, v in doc.items() if k != "sig"}
        res.check(not verifies(public, bytes.fromhex(doc["sig"]), TAG_PRESENCE + jcs(body)),
                  f"{name}: the signature verifies here")
        n_sig += 1
    res.check(n_sig >= 3, f"only {n_sig} invalid statuses with bad_signature")
    res.check(n_rule >= 5, f"only {n_rule} invalid statuses checked against a PRES-2 rule")


# --------------------------------------------------------------------------------------------
# h. Conversations

ZERO_HASH = "0" * 64
ENTRY_MEMBERS = ("conv", "seq", "at", "prev", "envelope", "event", "hash")
CLOSE_REASONS = ("turn_limit", "expired", "closed_by_owner", "everyone_left")


def is_hex64(x) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def is_int(x, lo: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= SAFE_MAX


def envelope_id(env: dict) -> str:
    """ENV-10, ENV-11: BLAKE3 of the envelope tag and the RFC 8785 form without id and sig."""
    return blake3.blake3(TAG_ENVELOPE + jcs({k: v for k, v in env.items() if k not in ("id", "sig")})).hexdigest()


def entry_hash(entry: dict) -> str:
    """CONVO-4: BLAKE3 of the conversation tag and the RFC 8785 form of the entry without hash."""
    return blake3.blake3(TAG_CONVERSATION + jcs({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def event_error(ev) -> str | None:
    """The refusal of an entry's `event` (CONVO-4), members read kind first, then by kind."""
    if not isinstance(ev, dict):
        return "invalid_field"
    kind = ev.get("kind")
    if kind is None:
        return "missing_field"
    if kind not in ("missed", "declined", "closed"):
        return "invalid_field"
    known = {"missed": ("kind", "handle"), "declined": ("kind", "handle", "reason"),
             "closed": ("kind", "reason")}[kind]
    for m in known[1:]:
        if m not in ev:
            return "missing_field"
        if not isinstance(ev[m], str):
            return "invalid_field"
    if kind == "declined" and len(ev["reason"]) > 280:
        return "invalid_field"
    if kind == "closed" and (ev["reason"] not in CLOSE_REASONS or ev["reason"] == "closed_by_owner"):
        return "invalid_field"
    if any(k not in known for k in ev):
        return "unknown_field"
    return None


def entry_error(doc) -> str | None:
    """What a reader of served entries answers (CONVO-4), in the protocol crate's order: conv,
    seq, at, prev, exactly one of envelope (its id recomputed) and event, hash, unknown members,
    then the hash itself. The envelope's schema and signature are not checked here."""
    if not isinstance(doc, dict):
        return "invalid_field"
    for m, ok in (("conv", is_hex64), ("seq", lambda x: is_int(x, 1)), ("at", lambda x: is_int(x, 0)),
                  ("prev", is_hex64)):
        if m not in doc:
            return "missing_field"
        if not ok(doc[m]):
            return "invalid_field"
    if ("envelope" in doc) == ("event" in doc):
        return "invalid_field"
    if "envelope" in doc:
        env = doc["envelope"]
        if not isinstance(env, dict):
            return "invalid_field"
        if "id" in env and env["id"] != envelope_id(env):
            return "id_mismatch"
    else:
        err = event_error(doc["event"])
        if err:
            return err
    if "hash" not in doc:
        return "missing_field"
    if not is_hex64(doc["hash"]):
        return "invalid_field"
    if any(k not in ENTRY_MEMBERS for k in doc):
        return "unknown_field"
    if doc["hash"] != entry_hash(doc):
        return "invalid_field"
    return None


BATCH_MEMBERS = ("conv", "to", "turns", "expires", "entries")


def plausible_agent_handle(x) -> bool:
    """A global agent handle, loosely: `@name@host` with a name other than the relay's address.
    (Handle syntax itself is checked by section b; here only the relay address matters.)"""
    if not isinstance(x, str) or not x.startswith("@") or x.count("@") != 2:
        return False
    name, host = x[1:].split("@")
    return bool(name) and bool(host) and name != "relay"


def batch_error(doc) -> tuple[str, str] | None:
    """What a participant relay's reader answers for a CONVO-13 batch, as (code, field): conv,
    to, turns, expires, entries, unknown members, then each entry (CONVO-4, via entry_error),
    naming the batch's conversation, consecutive and linked to the one before."""
    if not isinstance(doc, dict):
        return ("invalid_field", "")
    if "conv" not in doc:
        return ("missing_field", "conv")
    if not is_hex64(doc["conv"]):
        return ("invalid_field", "conv")
    if "to" not in doc:
        return ("missing_field", "to")
    to = doc["to"]
    if not isinstance(to, list) or len(to) > 256:
        return ("invalid_field", "to")
    for i, h in enumerate(to):
        if not plausible_agent_handle(h):
            return ("invalid_field", f"to[{i}]")
    if not to:
        return ("invalid_field", "to")
    for m, lo in (("turns", 1), ("expires", 0)):
        if m not in doc:
            return ("missing_field", m)
        if not is_int(doc[m], lo):
            return ("invalid_field", m)
    if "entries" not in doc:
        return ("missing_field", "entries")
    if not isinstance(doc["entries"], list):
        return ("invalid_field", "entries")
    for k in doc:
        if k not in BATCH_MEMBERS:
            return ("unknown_field", k)
    before = None
    for i, e in enumerate(doc["entries"]):
        err = entry_error(e)
        if err:
            return (err, f"entries[{i}]")
        if e["conv"] != doc["conv"]:
            return ("invalid_field", f"entries[{i}].conv")
        if before is not None:
            if e["seq"] != before["seq"] + 1:
                return ("invalid_field", f"entries[{i}].seq")
            if e["prev"] != before["hash"]:
                return ("invalid_field", f"entries[{i}].prev")
        before = e
    return None


def check_conversations(res: Results, keytool: str | None) -> None:
    print("== h. conversations.json (valid envelopes, the entry chain, entries_invalid, batches)")
    vectors = load("conversations.json")
    for i, case in enumerate(vectors["valid"]):
        name = f"conversation envelope {i} ({case['comment'][:50]})"
        check_envelope_case(res, keytool, name, case)
        env = case["envelope"]
        res.check((env["type"] == "call") == ("conv" not in env), f"{name}: conv on a call, or missing on a post or action")
    prev, conv = ZERO_HASH, None
    entries = vectors["entries"]
    res.check(len(entries) >= 4, f"only {len(entries)} entries")
    kinds = set()
    for k, case in enumerate(entries):
        name = f"entry {k + 1} ({case['comment'][:50]})"
        entry = case["entry"]
        hash_input = TAG_CONVERSATION + jcs(entry)
        res.equal(f"{name}: hash input", hexs(hash_input), case["hash_input_hex"])
        h = blake3.blake3(hash_input).hexdigest()
        res.equal(f"{name}: hash = BLAKE3(hash input)", h, case["hash"])
        res.equal(f"{name}: wire = RFC 8785 form of the entry with hash", jcs(dict(entry, hash=h)),
                  case["wire"].encode("utf-8"))
        res.equal(f"{name}: reader's verdict on the wire form", entry_error(json.loads(case["wire"])), None)
        res.equal(f"{name}: seq", entry.get("seq"), k + 1)
        res.equal(f"{name}: prev", entry.get("prev"), prev)
        if "envelope" in entry:
            env = entry["envelope"]
            kinds.add(env["type"] if env["type"] != "conv_action" else env["payload"]["action"])
            eid = envelope_id(env)
            res.equal(f"{name}: envelope id", env.get("id"), eid)
            signing_input = TAG_ENVELOPE + jcs({x: v for x, v in env.items() if x not in ("id", "sig")})
            res.check("public_key" in case and verifies(bytes.fromhex(case["public_key"]), bytes.fromhex(env["sig"]),
                                                         signing_input),
                      f"{name}: the envelope's signature does not verify with public_key")
            res.equal(f"{name}: envelope key", env.get("key"), key_id(bytes.fromhex(case.get("public_key", "00" * 32))))
            if k == 0:
                res.equal(f"{name}: entry 1 is the call", env["type"], "call")
                conv = eid
            else:
                res.equal(f"{name}: the envelope's conv", env.get("conv"), conv)
        else:
            kinds.add("event " + entry["event"]["kind"])
            res.check("public_key" not in case, f"{name}: an event entry with public_key")
        res.equal(f"{name}: conv is the call's id", entry.get("conv"), conv)
        prev = h
    res.equal("entries: head", vectors["state"].get("head"), prev)
    res.equal("entries: state id", vectors["state"].get("id"), conv)
    res.equal("entries: seq of the state", vectors["state"].get("seq"), len(entries))
    res.equal("entries: kinds", sorted(kinds),
              ["accept", "call", "event closed", "event declined", "event missed", "message"])
    n_bad = 0
    for i, case in enumerate(vectors["entries_invalid"]):
        name = f"invalid entry {i} ({case['comment'][:50]})"
        res.equal(f"{name}: reader's verdict", entry_error(json.loads(case["input"])), case["error"])
        n_bad += 1
    res.check(n_bad >= 3, f"only {n_bad} invalid entries")
    for i, case in enumerate(vectors["batches"]):
        name = f"batch {i} ({case['comment'][:50]})"
        res.equal(f"{name}: reader's verdict", batch_error(json.loads(case["input"])), None)
        res.equal(f"{name}: RFC 8785 form", jcs(json.loads(case["input"])), case["input"].encode("utf-8"))
    n_bad = 0
    for i, case in enumerate(vectors["batches_invalid"]):
        name = f"invalid batch {i} ({case['comment'][:50]})"
        got = batch_error(json.loads(case["input"]))
        res.check(got is not None, f"{name}: accepted")
        if got is None:
            continue
        code, field = got
        res.equal(f"{name}: code", code, case["error"])
        # Inside an entry the reader here names the entry; the vector names the member too.
        ok = field == case["field"] or (field.startswith("entries[") and "." not in field
                                        and case["field"].startswith(field + "."))
        res.check(ok, f"{name}: field {field!r}, vector {case['field']!r}")
        n_bad += 1
    res.check(n_bad >= 5, f"only {n_bad} invalid batches")


# --------------------------------------------------------------------------------------------
# i. Sealed payloads and encryption keys in key logs

SEAL_SUITE = "x25519-hkdf-sha256-chacha20poly1305"
SEAL_INFO = b"formica/v1/sealed-key"
TAG_SEALED = b"formica/v1/sealed\x00"
TAG_ENC_KEY_ID = b"formica/v1/enc-key-id\x00"
PADDED_MIN = 256
ENC_LIFETIME_MAX_MS = 366 * 24 * 3600 * 1000
SEALABLE_REGISTERED = ("message", "task_request", "task_result")
REGISTERED_TYPES = ("message", "task_request", "task_result", "ack", "receipt", "contact_request", "vouch",
                    "report", "call", "conv_action")
OPEN_REASONS = ("not_a_recipient", "unknown_key_id", "key_expired", "key_not_valid", "bad_tag", "bad_padding",
                "bad_plaintext")
# RFC 7748: the u-coordinates (mod p) of the points of order 1, 2, 4 and 8 on Curve25519 and its
# twist; X25519 with any (clamped) scalar maps them to the all-zero shared secret.
P25519 = 2**255 - 19
SMALL_ORDER_U = {0, 1, P25519 - 1,
                 325606250916557431795983626356110631294008115727848805560023387167927233504,
                 39382357235489614581723060781553021112529911719440698176882885853963445705823}


def hpke_suite():
    return CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)


def enc_key_id(public: bytes) -> str:
    """LOG-16: the first 16 bytes of BLAKE3("formica/v1/enc-key-id" 0x00 || key), in hex."""
    return blake3.blake3(TAG_ENC_KEY_ID + public).digest()[:16].hex()


def x25519_small_order(public: bytes) -> bool:
    """True if the X25519 public key (RFC 7748 decoding: top bit masked, reduced mod p) is of small order."""
    return (int.from_bytes(public, "little") & ((1 << 255) - 1)) % P25519 in SMALL_ORDER_U


def padme(n: int) -> int:
    """SEAL-6: the padded length of n bytes (plaintext and 0x80 marker): at least 256, then Padmé
    (Nikitin et al. 2019): with E = floor(log2 n) and S = floor(log2 E) + 1, the low E - S bits
    of n are rounded up."""
    if n <= PADDED_MIN:
        return PADDED_MIN
    e = n.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (n + mask) & ~mask


B64URL = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_decode(s: str) -> bytes | None:
    """ENC-6: base64url without padding, canonical (no '=', only the url alphabet, zero bits after
    the last byte); None otherwise."""
    if not isinstance(s, str) or any(c not in B64URL for c in s) or len(s) % 4 == 1:
        return None
    try:
        b = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except ValueError:
        return None
    return b if base64.urlsafe_b64encode(b).decode().rstrip("=") == s else None


def is_lower_hex(x, n_chars: int) -> bool:
    return isinstance(x, str) and len(x) == n_chars and all(c in "0123456789abcdef" for c in x)


# ---- key logs (LOG-1..LOG-12, LOG-16), written here from SPEC.md section 8 and the enc op

class EncPeriodPy:
    def __init__(self, key: bytes, start: int, expires: int):
        self.key, self.start, self.expires, self.until = key, start, expires, None

    def valid_at(self, t: int) -> bool:
        return self.start <= t < self.expires and (self.until is None or t < self.until)


class KeyLogState:
    def __init__(self):
        self.handle = None
        self.current = None       # public key bytes
        self.recovery = None
        self.used: set[bytes] = set()
        self.periods: list[list] = []  # [key, from, until]
        self.enc: list[EncPeriodPy] = []
        self.closed = False
        self.head = None

    def key_at(self, kid: str, t: int) -> bytes | None:
        for key, start, until in self.periods:
            if key_id(key) == kid:
                return key if start <= t and (until is None or t < until) else None
        return None

    def enc_lookup(self, kid: str, t: int) -> str:
        """What a recipient concludes about its encryption key kid at t: valid, unknown_key_id,
        key_expired (it reached its `expires` while still the published key), key_not_valid."""
        for p in self.enc:
            if enc_key_id(p.key) == kid:
                if p.valid_at(t):
                    return "valid"
                if t >= p.expires and (p.until is None or p.until >= p.expires):
                    return "key_expired"
                return "key_not_valid"
        return "unknown_key_id"

    def enc_current(self, t: int) -> str | None:
        now = [p for p in self.enc if p.valid_at(t)]
        return enc_key_id(now[-1].key) if now else None


ENTRY_OP_MEMBERS = {
    "register": (("key", True), ("recovery", False)),
    "rotate": (("key", True), ("key_sig", True)),
    "revoke": (),
    "recover": (("key", True), ("key_sig", True), ("recovery", False)),
    "move": (("to", True),),
    "enc": (("enc", True), ("expires", True)),
}


def keylog_entry_error(e) -> str | None:
    """LOG-1, LOG-3 and LOG-16: the schema of one entry, members in the order LOG-3 gives."""
    if not isinstance(e, dict):
        return "invalid_field"
    if "v" not in e:
        return "missing_field"
    if not is_int(e["v"], 0):
        return "invalid_field"
    if e["v"] != 1:
        return "unsupported_version"
    if "handle" not in e:
        return "missing_field"
    if not isinstance(e["handle"], str):
        return "invalid_field"
    if not plausible_agent_handle(e["handle"]):
        return "invalid_handle"
    if "seq" not in e:
        return "missing_field"
    if not is_int(e["seq"], 0):
        return "invalid_field"
    if "prev" in e and not is_hex64(e["prev"]):
        return "invalid_field"
    if ("prev" in e) != (e["seq"] > 0):
        return "keylog_broken_chain"
    for m in ("ts", "op"):
        if m not in e:
            return "missing_field"
    if not is_int(e["ts"], 0):
        return "invalid_field"
    op = e["op"]
    if not isinstance(op, str) or op not in ENTRY_OP_MEMBERS:
        return "invalid_field"
    members = list(ENTRY_OP_MEMBERS[op])
    if "recovery" in e and op in ("register", "recover"):
        members.append(("recovery_sig", True))
    for m, required in members:
        if m not in e:
            if required:
                return "missing_field"
            continue
        x = e[m]
        if m in ("key", "recovery"):
            if not isinstance(x, str):
                return "invalid_field"
            if not is_lower_hex(x, 64):
                return "invalid_key"
        elif m in ("key_sig", "recovery_sig"):
            if not is_lower_hex(x, 128):
                return "invalid_field"
        elif m == "to":
            if not isinstance(x, str):
                return "invalid_field"
            if not plausible_agent_handle(x):
                return "invalid_handle"
        elif m == "enc":
            if not isinstance(x, str):
                return "invalid_field"
            if not is_lower_hex(x, 64):
                return "invalid_key"
            if x25519_small_order(bytes.fromhex(x)):
                return "weak_key"
        elif m == "expires":
            if not is_int(x, 0) or not (e["ts"] < x <= e["ts"] + ENC_LIFETIME_MAX_MS):
                return "invalid_field"
    for m in ("signer", "sig"):
        if m not in e:
            return "missing_field"
    if not is_lower_hex(e["signer"], 32) or not is_lower_hex(e["sig"], 128):
        return "invalid_field"
    allowed = {"v", "handle", "seq", "prev", "ts", "op", "signer", "sig"} | {m for m, _ in members}
    if any(k not in allowed for k in e):
        return "unknown_field"
    return None


def verify_keylog(entries: list) -> KeyLogState | str:
    """LOG-10 with LOG-16: the log's state, or the code of the first failing check."""
    for e in entries:
        err = keylog_entry_error(e)
        if err:
            return err
    if not entries:
        return "keylog_broken_chain"
    st = KeyLogState()
    e0 = entries[0]
    if e0["seq"] != 0 or "prev" in e0 or e0["op"] != "register":
        return "keylog_broken_chain"
    key = bytes.fromhex(e0["key"])
    if e0["signer"] != key_id(key):
        return "keylog_unauthorized_signer"
    body = {k: v for k, v in e0.items() if k != "sig"}
    if not verifies(key, bytes.fromhex(e0["sig"]), TAG_KEYLOG + jcs(body)):
        return "bad_signature"
    if "recovery" in e0:
        if not verifies(bytes.fromhex(e0["recovery"]), bytes.fromhex(e0["recovery_sig"]), proof_input(e0)):
            return "bad_signature"
        if e0["recovery"] == e0["key"]:
            return "keylog_key_reused"
        st.recovery = bytes.fromhex(e0["recovery"])
        st.used.add(st.recovery)
    st.handle, st.current = e0["handle"], key
    st.used.add(key)
    st.periods.append([key, e0["ts"], None])
    st.head = blake3.blake3(TAG_KEYLOG + jcs(body)).hexdigest()
    before = e0
    for e in entries[1:]:
        if e["handle"] != st.handle:
            return "keylog_handle_mismatch"
        if st.closed:
            return "keylog_closed"
        if e["seq"] != before["seq"] + 1 or e.get("prev") != st.head:
            return "keylog_broken_chain"
        if e["ts"] <= before["ts"]:
            return "keylog_time_order"
        op = e["op"]
        if op == "register":
            return "keylog_broken_chain"
        if op == "move" and e["to"] == st.handle:
            return "invalid_field"
        signer = None
        if op in ("rotate", "move", "enc"):
            if st.current is not None and e["signer"] == key_id(st.current):
                signer = st.current
        elif op == "revoke":
            for k in (st.current, st.recovery):
                if st.current is not None and k is not None and e["signer"] == key_id(k):
                    signer = k
                    break
        elif op == "recover":
            if st.recovery is not None and e["signer"] == key_id(st.recovery):
                signer = st.recovery
        if signer is None:
            return "keylog_unauthorized_signer"
        body = {k: v for k, v in e.items() if k != "sig"}
        if not verifies(signer, bytes.fromhex(e["sig"]), TAG_KEYLOG + jcs(body)):
            return "bad_signature"
        for proof, member in proofs_needed(e).items():
            if not verifies(bytes.fromhex(e[member]), bytes.fromhex(e[proof]), proof_input(e)):
                return "bad_signature"
        new = [bytes.fromhex(e[m]) for m in ("key", "recovery") if m in e and op in ("rotate", "recover")]
        if any(k in st.used for k in new) or len(set(new)) != len(new):
            return "keylog_key_reused"
        if op == "enc" and any(p.key == bytes.fromhex(e["enc"]) for p in st.enc):
            return "keylog_key_reused"
        t = e["ts"]
        if op in ("rotate", "revoke", "recover", "move") and st.periods and st.periods[-1][2] is None:
            st.periods[-1][2] = t
        if op in ("enc", "revoke", "recover", "move") and st.enc and st.enc[-1].until is None:
            st.enc[-1].until = t  # LOG-16: every op but rotate ends the encryption key
        if op in ("rotate", "recover"):
            st.current = bytes.fromhex(e["key"])
            st.periods.append([st.current, t, None])
            if op == "recover" and "recovery" in e:
                st.recovery = bytes.fromhex(e["recovery"])
        elif op in ("revoke", "move"):
            st.current = None
            st.closed = op == "move"
        elif op == "enc":
            st.enc.append(EncPeriodPy(bytes.fromhex(e["enc"]), t, e["expires"]))
        st.used.update(new)
        st.head = blake3.blake3(TAG_KEYLOG + jcs(body)).hexdigest()
        before = e
    return st


# ---- the sealed structure, as relays read it (SEAL-1..SEAL-4, SEAL-6)

def sealed_object_error(s, path: str) -> tuple[str, str] | None:
    """The `sealed` object, members read in the order suite, keys (each: to, kid, enc, wrapped,
    then unknown members), ct, then unknown members."""
    if not isinstance(s, dict):
        return ("invalid_field", path)
    if "suite" not in s:
        return ("missing_field", f"{path}.suite")
    if s["suite"] != SEAL_SUITE:
        return ("invalid_field", f"{path}.suite")
    if "keys" not in s:
        return ("missing_field", f"{path}.keys")
    keys = s["keys"]
    if not isinstance(keys, list) or not keys:
        return ("invalid_field", f"{path}.keys")
    for i, k in enumerate(keys):
        kp = f"{path}.keys[{i}]"
        if not isinstance(k, dict):
            return ("invalid_field", kp)
        for m, n in (("to", None), ("kid", 32), ("enc", 64), ("wrapped", 96)):
            if m not in k:
                return ("missing_field", f"{kp}.{m}")
            if m == "to":
                if not isinstance(k[m], str):
                    return ("invalid_field", f"{kp}.to")
                if not plausible_agent_handle(k[m]):
                    return ("invalid_handle", f"{kp}.to")
            elif not is_lower_hex(k[m], n):
                return ("invalid_field", f"{kp}.{m}")
        for m in k:
            if m not in ("to", "kid", "enc", "wrapped"):
                return ("unknown_field", f"{kp}.{m}")
    if "ct" not in s:
        return ("missing_field", f"{path}.ct")
    ct = b64url_decode(s["ct"])
    if ct is None or len(ct) < 16 + PADDED_MIN or padme(len(ct) - 16) != len(ct) - 16:
        return ("invalid_field", f"{path}.ct")
    for m in s:
        if m not in ("suite", "keys", "ct"):
            return ("unknown_field", f"{path}.{m}")
    return None


def sealable_type(t) -> bool:
    return t in SEALABLE_REGISTERED or (isinstance(t, str) and t.startswith("x-"))


def sealed_envelope_error(env: dict) -> tuple[str, str] | None:
    """What a relay answers for the sealed parts of an envelope (the rest of the envelope schema,
    checked by section b's vectors, is assumed): SEAL-2 (sealable types), the sealed object, no
    other payload member, then the envelope rules in the order the protocol crate checks them
    (a task_result's corr, TYPE-6) and SEAL-4's addressing: one key per recipient of `to` in its
    order, then at most one for `from`."""
    payload = env.get("payload")
    if not (isinstance(payload, dict) and "sealed" in payload):
        return ("not_sealed", "payload")
    if not sealable_type(env.get("type")):
        return ("invalid_field", "payload.sealed")
    err = sealed_object_error(payload["sealed"], "payload.sealed")
    if err:
        return err
    for m in payload:
        if m != "sealed":
            return ("unknown_field", f"payload.{m}")
    if env.get("type") == "task_result" and "corr" not in env:
        return ("missing_field", "corr")
    keys, to = payload["sealed"]["keys"], env["to"]
    if len(keys) not in (len(to), len(to) + 1):
        return ("invalid_field", "payload.sealed.keys")
    for i, k in enumerate(keys):
        if k["to"] != (to[i] if i < len(to) else env["from"]):
            return ("invalid_field", f"payload.sealed.keys[{i}].to")
    return None


def routing_aad(env: dict) -> bytes:
    """SEAL-5: BLAKE3("formica/v1/sealed" 0x00 || JCS of from, to, type, type_version, ts, and
    corr and conv when present)."""
    header = {k: env[k] for k in ("from", "to", "type", "type_version", "ts", "corr", "conv") if k in env}
    return blake3.blake3(TAG_SEALED + jcs(header)).digest()


# ---- opening, as a recipient (SEAL-10, SEAL-11)

class NotStrict(ValueError):
    pass


def strict_json(b: bytes):
    """The strict profile where it matters for a plaintext: UTF-8, no duplicate keys, no floats,
    integers within +/-(2^53-1), no lone surrogates."""
    def pairs(items):
        d = {}
        for k, v in items:
            if k in d:
                raise NotStrict("duplicate key")
            d[k] = v
        return d

    def no_float(_):
        raise NotStrict("float")

    def check(v):
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int):
            if abs(v) > SAFE_MAX:
                raise NotStrict("integer out of range")
        elif isinstance(v, str):
            v.encode("utf-8")  # raises on a lone surrogate
        elif isinstance(v, list):
            for x in v:
                check(x)
        elif isinstance(v, dict):
            for k, x in v.items():
                check(k)
                check(x)

    v = json.loads(b.decode("utf-8"), object_pairs_hook=pairs, parse_float=no_float, parse_constant=no_float)
    check(v)
    return v


def task_name_ok(x) -> bool:
    return (isinstance(x, str) and 1 <= len(x.encode("utf-8")) <= 64 and x[0] in "abcdefghijklmnopqrstuvwxyz0123456789"
            and all(c in "abcdefghijklmnopqrstuvwxyz0123456789._-" for c in x))


def plain_payload_error(t: str, p) -> str | None:
    """TYPE-4, TYPE-5, TYPE-6, TYPE-12, TYPE-13 for the sealable types."""
    if not isinstance(p, dict):
        return "not an object"
    if "sealed" in p:
        return "a sealed payload inside"
    if t.startswith("x-"):
        return None
    schema = {"message": {"text": True, "data": False}, "task_request": {"task": True, "input": False},
              "task_result": {"status": True, "output": False, "error": False}}[t]
    for m, required in schema.items():
        if required and m not in p:
            return f"no {m}"
    for m in p:
        if m not in schema:
            return f"unknown member {m}"
    if t == "message" and not isinstance(p["text"], str):
        return "text is not a string"
    if t == "task_request" and not task_name_ok(p["task"]):
        return "task is not a name"
    if t == "task_result":
        if p["status"] not in ("ok", "error"):
            return "status"
        if "error" in p and (p["status"] != "error" or not isinstance(p["error"], str) or len(p["error"]) > 280):
            return "error"
    return None


def open_sealed(env: dict, me: str, state: KeyLogState, secrets: dict[str, bytes]) -> tuple[str | None, object, bytes]:
    """Opens env's sealed payload as `me` with its verified key log and encryption secrets (key id
    -> secret): (None, payload, content key) or (reason, None, content key if it was unwrapped)."""
    sealed = env["payload"]["sealed"]
    mine = [k for k in sealed["keys"] if k["to"] == me]
    if not mine:
        return ("not_a_recipient", None, b"")
    k = mine[0]
    lookup = state.enc_lookup(k["kid"], env["ts"])
    if lookup != "valid":
        return (lookup, None, b"")
    if k["kid"] not in secrets:
        return ("unknown_key_id", None, b"")
    aad = routing_aad(env)
    suite = hpke_suite()
    try:
        skr = suite.kem.deserialize_private_key(secrets[k["kid"]])
        ctx = suite.create_recipient_context(bytes.fromhex(k["enc"]), skr, info=SEAL_INFO)
        content_key = ctx.open(bytes.fromhex(k["wrapped"]), aad=aad)
    except Exception:  # pyhpke's OpenError, or an all-zero X25519 output refused by OpenSSL
        return ("bad_tag", None, b"")
    if len(content_key) != 32:
        return ("bad_tag", None, content_key)
    try:
        padded = ChaCha20Poly1305(content_key).decrypt(b"\x00" * 12, b64url_decode(sealed["ct"]), aad)
    except InvalidTag:
        return ("bad_tag", None, content_key)
    body = padded.rstrip(b"\x00")
    if not body or body[-1] != 0x80 or padme(len(body)) != len(padded):
        return ("bad_padding", None, content_key)
    plain = body[:-1]
    try:
        value = strict_json(plain)
    except (ValueError, UnicodeError, RecursionError):
        return ("bad_plaintext", None, content_key)
    if jcs(value) != plain or plain_payload_error(env["type"], value) is not None:
        return ("bad_plaintext", None, content_key)
    return (None, value, content_key)


def check_rfc9180(res: Results) -> None:
    """RFC 9180 A.2.1 through pyhpke: keys from ikm, deterministic Encap with ikmE, the six
    encryptions sealed by the sender context (all 257 sequence numbers up to 256) and opened by
    the recipient context, their nonces, and the exports on both sides."""
    v = json.loads((VECTORS / "external" / "rfc9180" / "x25519-sha256-chacha20poly1305-base.json").read_text())
    name = "RFC 9180 A.2.1"
    res.equal(f"{name}: suite ids", (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]),
              (0, KEMId.DHKEM_X25519_HKDF_SHA256.value, KDFId.HKDF_SHA256.value, AEADId.CHACHA20_POLY1305.value))
    suite = hpke_suite()
    kp_e = suite.kem.derive_key_pair(bytes.fromhex(v["ikmE"]))
    kp_r = suite.kem.derive_key_pair(bytes.fromhex(v["ikmR"]))
    res.equal(f"{name}: skEm from ikmE", kp_e.private_key.to_private_bytes().hex(), v["skEm"])
    res.equal(f"{name}: pkEm from ikmE", kp_e.public_key.to_public_bytes().hex(), v["pkEm"])
    res.equal(f"{name}: skRm from ikmR", kp_r.private_key.to_private_bytes().hex(), v["skRm"])
    res.equal(f"{name}: pkRm from ikmR", kp_r.public_key.to_public_bytes().hex(), v["pkRm"])
    shared, enc = suite.kem.encap(kp_r.public_key, None, kp_e)
    res.equal(f"{name}: Encap enc", enc.hex(), v["enc"])
    res.equal(f"{name}: Encap shared_secret", shared.hex(), v["shared_secret"])
    skr = suite.kem.deserialize_private_key(bytes.fromhex(v["skRm"]))
    res.equal(f"{name}: Decap shared_secret", suite.kem.decap(bytes.fromhex(v["enc"]), skr).hex(), v["shared_secret"])
    info = bytes.fromhex(v["info"])
    enc2, sender = suite.create_sender_context(suite.kem.deserialize_public_key(bytes.fromhex(v["pkRm"])), info,
                                               eks=kp_e)
    res.equal(f"{name}: SetupBaseS enc", enc2.hex(), v["enc"])
    recipient = suite.create_recipient_context(bytes.fromhex(v["enc"]), skr, info)
    listed = {x["seq"]: x for x in v["encryptions"]}
    res.equal(f"{name}: encryption seqs", sorted(listed), [0, 1, 2, 4, 255, 256])
    base_nonce = bytes.fromhex(v["base_nonce"])
    for seq in range(max(listed) + 1):
        x = listed.get(seq)
        pt = bytes.fromhex(x["pt"]) if x else bytes.fromhex(v["encryptions"][0]["pt"])
        aad = bytes.fromhex(x["aad"]) if x else f"Count-{seq}".encode()
        ct = sender.seal(pt, aad)
        if x:
            res.equal(f"{name}: aad of seq {seq}", aad, f"Count-{seq}".encode())
            res.equal(f"{name}: nonce of seq {seq}", x["nonce"],
                      bytes(a ^ b for a, b in zip(base_nonce, seq.to_bytes(12, "big"))).hex())
            res.equal(f"{name}: sender's ct of seq {seq}", ct.hex(), x["ct"])
            ct = bytes.fromhex(x["ct"])
        try:
            got = recipient.open(ct, aad)
        except Exception as e:
            got = f"<{type(e).__name__}>"
        if x:
            res.equal(f"{name}: recipient opens seq {seq}", got, pt)
        elif got != pt:
            res.check(False, f"{name}: recipient does not open the sender's seq {seq}")
    for i, x in enumerate(v["exports"]):
        ctx_bytes = bytes.fromhex(x["exporter_context"])
        res.equal(f"{name}: sender export {i}", sender.export(ctx_bytes, x["L"]).hex(), x["exported_value"])
        res.equal(f"{name}: recipient export {i}", recipient.export(ctx_bytes, x["L"]).hex(), x["exported_value"])
    res.check(len(v["exports"]) >= 3, f"{name}: only {len(v['exports'])} exports")


def check_sealed(res: Results) -> None:
    print("== i. sealed.json and RFC 9180 A.2.1 (pyhpke; key logs with enc, valid, unopenable, invalid)")
    check_rfc9180(res)
    vec = load("sealed.json")
    res.equal("sealed.json: suite", vec["suite"], SEAL_SUITE)
    res.equal("sealed.json: hpke_info_hex", vec["hpke_info_hex"], SEAL_INFO.hex())

    # SEAL-6 padding table, and properties of the buckets.
    for n, want in vec["padding"]:
        res.equal(f"padding of {n}", padme(n), want)
    res.check(all(padme(padme(n)) == padme(n) and padme(n) >= n for n in range(1, 70000)), "Padmé: not a bucket")
    res.check(all((padme(n) - n) * 100 <= n * 12 for n in range(PADDED_MIN + 1, 70000)), "Padmé: overhead > 12 %")

    # The key log verifier written here accepts every valid log of keylogs.json.
    for li, log in enumerate(load("keylogs.json")["valid"]):
        st = verify_keylog(log["entries"])
        res.check(isinstance(st, KeyLogState), f"keylogs.json valid {li}: refused here with {st}")
        if isinstance(st, KeyLogState):
            res.equal(f"keylogs.json valid {li}: head", st.head, log["head"])

    # Agents: their logs with enc entries, enc key ids, public keys from the secrets.
    agents: dict[str, tuple[KeyLogState, dict[str, bytes]]] = {}
    for a in vec["agents"]:
        name = f"agent {a['handle']}"
        st = verify_keylog(a["log"])
        if not res.check(isinstance(st, KeyLogState), f"{name}: key log refused here with {st}"):
            continue
        res.equal(f"{name}: log handle", st.handle, a["handle"])
        published = {enc_key_id(p.key): p.key for p in st.enc}
        res.check(len(published) >= 1, f"{name}: no enc entry")
        secrets = {}
        for s in a["enc_secrets"]:
            sk = X25519PrivateKey.from_private_bytes(bytes.fromhex(s["secret"]))
            public = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            res.equal(f"{name}: public from secret", public.hex(), s["public"])
            suite = hpke_suite()
            enc, sender = suite.create_sender_context(suite.kem.deserialize_public_key(public), SEAL_INFO)
            receiver = suite.create_recipient_context(
                enc, suite.kem.deserialize_private_key(bytes.fromhex(s["secret"])), SEAL_INFO)
            res.equal(f"{name}: kid", enc_key_id(public), s["kid"])
            res.equal(f"{name}: the key {s['kid']} is published in the log", published.get(s["kid"]), public)
            res.equal(f"{name}: pyhpke seals to the public key, the secret opens", receiver.open(sender.seal(b"k")), b"k")
            secrets[s["kid"]] = bytes.fromhex(s["secret"])
        res.equal(f"{name}: a secret for every published key", sorted(secrets), sorted(published))
        agents[a["handle"]] = (st, secrets)

    def sender_verifies(env: dict) -> bool:
        st = agents.get(env["from"], (None,))[0]
        key = st.key_at(env["key"], env["ts"]) if st else None
        body = {k: v for k, v in env.items() if k not in ("id", "sig")}
        return key is not None and verifies(key, bytes.fromhex(env["sig"]), TAG_ENVELOPE + jcs(body))

    # valid: relays accept; every sealed key opens to the same content key and the payload.
    for i, case in enumerate(vec["valid"]):
        name = f"sealed valid {i} ({case['comment'][:50]})"
        env = json.loads(case["input"])
        res.equal(f"{name}: wire is canonical", jcs(env), case["input"].encode("utf-8"))
        res.equal(f"{name}: id", env.get("id"), envelope_id(env))
        res.check(sender_verifies(env), f"{name}: the sender's signature does not verify")
        res.equal(f"{name}: relay's verdict", sealed_envelope_error(env), None)
        aad = routing_aad(env)
        res.equal(f"{name}: aad", aad.hex(), case["aad"])
        ct = b64url_decode(env["payload"]["sealed"]["ct"])
        res.equal(f"{name}: padded bytes", len(ct) - 16, case["padded_bytes"])
        keys = env["payload"]["sealed"]["keys"]
        res.equal(f"{name}: opens lists every sealed key", sorted(o["recipient"] for o in case["opens"]),
                  sorted(k["to"] for k in keys))
        content_keys = set()
        for o in case["opens"]:
            st, secrets = agents[o["recipient"]]
            reason, value, content_key = open_sealed(env, o["recipient"], st, secrets)
            if not res.equal(f"{name}: {o['recipient']} opens", reason, None):
                continue
            res.equal(f"{name}: {o['recipient']}'s payload", value, o["payload"])
            content_keys.add(content_key)
            plain = jcs(o["payload"])
            res.equal(f"{name}: bucket of the plaintext", padme(len(plain) + 1), case["padded_bytes"])
            padded = plain + b"\x80" + b"\x00" * (case["padded_bytes"] - len(plain) - 1)
            res.equal(f"{name}: ct = ChaCha20-Poly1305(content key, 0^12, aad, padded)",
                      ChaCha20Poly1305(content_key).encrypt(b"\x00" * 12, padded, aad), ct)
        res.equal(f"{name}: one content key for all", len(content_keys), 1)
        for stranger in sorted(set(agents) - {k["to"] for k in keys}):
            res.equal(f"{name}: {stranger} cannot open", open_sealed(env, stranger, *agents[stranger])[0],
                      "not_a_recipient")

    # unopenable: relays accept; the recipient refuses with the reason found here.
    reasons = set()
    for i, case in enumerate(vec["unopenable"]):
        name = f"sealed unopenable {i} ({case['comment'][:50]})"
        env = json.loads(case["input"])
        res.equal(f"{name}: id", env.get("id"), envelope_id(env))
        res.check(sender_verifies(env), f"{name}: the sender's signature does not verify")
        res.equal(f"{name}: relay's verdict", sealed_envelope_error(env), None)
        reason = open_sealed(env, case["recipient"], *agents[case["recipient"]])[0]
        res.equal(f"{name}: reason", reason, case["reason"])
        reasons.add(case["reason"])
    res.equal("sealed unopenable: every reason", sorted(reasons), sorted(OPEN_REASONS))

    # invalid: relays refuse with the code and field found here.
    for i, case in enumerate(vec["invalid"]):
        name = f"sealed invalid {i} ({case['comment'][:50]})"
        env = json.loads(case["input"])
        res.equal(f"{name}: code and field", sealed_envelope_error(env), (case["error"], case["field"]))
        res.check(sender_verifies(env), f"{name}: the sender's signature does not verify (so it is not the structure alone)")

    # keylogs_valid: validity of each encryption key at the queried times, the current key.
    for i, case in enumerate(vec["keylogs_valid"]):
        name = f"sealed keylog valid {i} ({case['comment'][:50]})"
        st = verify_keylog(case["entries"])
        if not res.check(isinstance(st, KeyLogState), f"{name}: refused here with {st}"):
            continue
        res.equal(f"{name}: head", st.head, case["head"])
        for q in case["enc"]["queries"]:
            res.equal(f"{name}: {q['kid']} at {q['ts']}", st.enc_lookup(q["kid"], q["ts"]),
                      "valid" if q["result"] == "valid" else q["result"])
        for q in case["enc"]["current"]:
            res.equal(f"{name}: current at {q['ts']}", st.enc_current(q["ts"]), q["kid"])
    for i, case in enumerate(vec["keylogs_invalid"]):
        name = f"sealed keylog invalid {i} ({case['comment'][:50]})"
        res.equal(f"{name}: code", verify_keylog(case["entries"]), case["error"])

# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keytool", default=os.environ.get("KEYTOOL"),
                        help="path to the keytool binary (default: $KEYTOOL, else target/debug/keytool)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"RNG seed (default {DEFAULT_SEED})")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"random documents to generate (default {DEFAULT_COUNT})")
    args = parser.parse_args()

    keytool = args.keytool or str(REPO / "target" / "debug" / "keytool")
    if not (os.path.isfile(keytool) and os.access(keytool, os.X_OK)):
        print(f"keytool not found or not executable: {keytool}")
        keytool = None
    print(f"crosscheck: keytool {keytool}, seed {args.seed}, rfc8785 {rfc8785.__version__}, "
          f"blake3 {blake3.__version__}")

    res = Results()
    for section in (lambda: check_canonicalization(res, keytool, args.seed, args.count),
                    lambda: check_envelopes(res, keytool),
                    lambda: check_keylogs(res, keytool),
                    lambda: check_pow(res),
                    lambda: check_auth(res),
                    lambda: check_profiles(res),
                    lambda: check_presence(res),
                    lambda: check_conversations(res, keytool),
                    lambda: check_sealed(res)):
        try:
            section()
        except Exception as e:  # a crash in one section is a failure, not the end of the run
            res.check(False, f"unexpected {type(e).__name__}: {e}")

    print(f"canonicalization comparisons: {res.canon_comparisons} (minimum {MIN_CANON_COMPARISONS})")
    res.check(res.canon_comparisons >= MIN_CANON_COMPARISONS,
              f"too few canonicalization comparisons ran: {res.canon_comparisons} < {MIN_CANON_COMPARISONS}")
    res.report()
    print(f"{res.passed} passed, {len(res.failures)} failed")
    return 1 if res.failures or res.canon_comparisons < MIN_CANON_COMPARISONS else 0


if __name__ == "__main__":
    sys.exit(main())
