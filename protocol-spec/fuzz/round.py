#!/usr/bin/env python3
"""Runs one fuzzing round of one target and summarises it, for the plateau rounds in FUZZING.md.

    python3 round.py [--no-sanitizer] <target> <seconds> [extra libFuzzer flags...]

The summary also counts the code locations (`NEW_PC` lines: function and file:line) that this
round found and that no earlier round of the same target, in logs/, had found. libFuzzer prints
`NEW_PC` only after the corpus has been replayed, so a location found again by a later round
(one the replay did not reach: in dependency code whose path depends on hash seeds, for example)
is not new; a round that finds no new location and ends at the coverage of the earlier rounds
has found no new code. Logs of a superseded build are moved out of logs/ by hand.

The target binary must have been built by `cargo fuzz build` (release, AddressSanitizer, debug
assertions). The round resumes from corpus/<target> (where libFuzzer adds what it finds) and also
reads seeds/<target> (committed, read-only). Every output line is written to
logs/<target>-<start>.log with the seconds since the start of the round, and the summary line
printed at the end gives: executions, cov/ft when the corpus had been replayed (INITED) and at
the end, and when in the round the last new edge (NEW_PC or a rise of cov) and the last new
feature (a rise of ft) were found. Exits with libFuzzer's status (non-zero on a finding, or when it
was stopped by hand).

`--no-sanitizer` runs a separate series, `<target>.nosan`, on a build without a sanitizer (about
four times as many executions a second for relay_http), built by
`RUSTC_BOOTSTRAP=1 cargo fuzz build -s none --target-dir target-nosan <target>`. Its rounds write
to corpus/<target>.nosan and also read corpus/<target> (the sanitizer series' corpus); their logs
are logs/<target>.nosan-<start>.log. Such a build has no symbolizer, so libFuzzer prints NEW_PC
addresses only: each is symbolized here with llvm-symbolizer and logged in the form the
sanitizer runtime prints (see Symbolizer). After a round that ends without a finding, every
input of corpus/<target>.nosan that logs/<target>.nosan.replayed does not list (those the round
added, and those of an earlier round that did not finish) is run once through the sanitizer
build (target/, which must be built from the same source), and the ones that ran clean are
listed; that output is logged with the prefix `[asan] ` and a last line
`[asan] replayed K of N inputs: exit X`, and a non-zero exit counts as a finding.
Standard library only except llvm-symbolizer, for --no-sanitizer.
"""
import contextlib
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)")
TIMED = re.compile(r"^\[\s*([\d.]+)\] (.*)")
FINDING = re.compile(r"ERROR: |deadly signal|SUMMARY: |==\d+==")
# What libFuzzer prints when it is stopped by SIGINT (by hand): not a finding.
STOPPED = "libFuzzer: run interrupted; exiting"
TRIPLE = "x86_64-unknown-linux-gnu"
PC_TABLE = re.compile(r"Loaded 1 PC tables \(\d+ PCs\): \d+ \[(0x[0-9a-f]+),")
NEW_PC_BARE = re.compile(r"^(\s*NEW_PC: )(0x[0-9a-f]+)\s*$")
REPLAYED = re.compile(r"^replayed (\d+) of (\d+) inputs: exit (-?\d+)$")
# Inputs per sanitizer replay process (one command line).
REPLAY_CHUNK = 500


def summarize(log_path):
    """A round's figures from its log (as written below: each line after the command line
    prefixed with the seconds since the start, and the sanitizer replay's lines with `[asan] `).
    `replay` is (inputs run clean or up to the failure, inputs to run, exit status) of the
    sanitizer replay after a --no-sanitizer round, None when there was none (or it did not
    finish); `pcs` are the NEW_PC locations (a NEW_PC line with no location counts as one of
    its own, by its text); `inited` and `end` are None when the corpus
    replay never finished; `done` is false for a round that was interrupted (stopped by hand
    with SIGINT, or the session ended); `executions` is the final statistics' count, or the
    last status line's when the log has none (the session ended); `command` is the libFuzzer
    command line."""
    inited = last = execs = peak_rss_mb = max_len = None
    t = last_cov_t = last_ft_t = 0.0
    pcs = set()
    finding = stopped = False
    command = ""
    replayed = None
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("# ") and not command:
                command = line[2:].strip()
            if line.startswith("[asan] "):
                body = line[len("[asan] "):].rstrip("\n")
                finding = finding or bool(FINDING.search(body))
                r = REPLAYED.match(body)
                if r:
                    replayed = (int(r[1]), int(r[2]), int(r[3]))
                    finding = finding or replayed[2] != 0
                continue
            m = TIMED.match(line.rstrip("\n"))
            if not m:
                continue
            t, body = float(m[1]), m[2]
            if STOPPED in body:
                stopped = True
                continue
            finding = finding or bool(FINDING.search(body))
            s = STATUS.match(body)
            if s:
                n, kind, cov, ft, corp = int(s[1]), s[2], int(s[3]), int(s[4]), int(s[5])
                if kind == "INITED":
                    inited = (cov, ft, corp)
                elif inited is not None and last is not None:
                    if cov > last[0]:
                        last_cov_t = t
                    if ft > last[1]:
                        last_ft_t = t
                if inited is not None:
                    last = (cov, ft, corp, n)
            elif "NEW_PC" in body:
                # The code location: the text after ' in ' (function and file:line), or, when
                # the address was not symbolized, the line's text (for an address with no debug
                # information the sanitizer runtime prints `(binary+0xOFFSET)`).
                pcs.add(body.split(" in ", 1)[1].strip() if " in " in body
                        else "unsymbolized " + body.split("NEW_PC:", 1)[-1].strip())
                if inited is not None:
                    last_cov_t = t
            elif body.startswith("stat::number_of_executed_units:"):
                execs = int(body.split(":")[-1])
            elif body.startswith("stat::peak_rss_mb:"):
                peak_rss_mb = int(body.split(":")[-1])
            elif max_len is None and "will not generate inputs larger than" in body:
                max_len = int(re.search(r"larger than (\d+)", body)[1])
    return {
        "inited": inited,
        "end": last,
        "seconds": t,
        "done": execs is not None and not stopped,
        "executions": execs if execs is not None else (last[3] if last else 0),
        "last_new_cov_s": last_cov_t,
        "last_new_ft_s": last_ft_t,
        "pcs": pcs,
        "peak_rss_mb": peak_rss_mb,
        "max_len": max_len,
        "finding": finding,
        "command": command,
        "replay": replayed,
    }


def section_address(binary, name):
    """The link-time address of ELF section `name` of `binary` (64-bit little-endian)."""
    data = pathlib.Path(binary).read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def header(k):
        # sh_name, sh_addr, sh_offset
        o = shoff + k * shentsize
        return struct.unpack_from("<I", data, o)[0], *struct.unpack_from("<QQ", data, o + 0x10)
    strtab = header(shstrndx)[2]
    for k in range(shnum):
        name_off, addr, _ = header(k)
        start = strtab + name_off
        if data[start:data.index(b"\0", start)] == name.encode():
            return addr
    raise SystemExit(f"{binary}: no section {name}")


class Symbolizer:
    """Symbolizes the NEW_PC addresses of a build without a sanitizer: libFuzzer logs the PC
    table's address in memory, the binary has its link-time address, their difference is the
    load address. Without a sanitizer libFuzzer prints a PC table entry plus one; the line
    written names the entry, as the sanitizer runtime does, in the runtime's form: the innermost
    inlined frame, `:line` left out when it is 0 and `:column` when it is 0, `(binary+0xOFFSET)`
    when the address has no debug information. If llvm-symbolizer fails, the rest of the
    round's NEW_PC lines stay bare (summarize counts each as a new location)."""

    def __init__(self, binary):
        self.binary = binary
        self.table = section_address(binary, "__sancov_pcs")
        self.base = None
        self.proc = subprocess.Popen(
            ["llvm-symbolizer", f"--obj={binary}", "--functions=short"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def frames(self, address):
        """llvm-symbolizer's lines for `address` (function, file:line:column, per inlined
        frame, innermost first), or None once it has failed."""
        if self.proc is None:
            return None
        try:
            self.proc.stdin.write(f"{address:#x}\n")
            self.proc.stdin.flush()
            out = []
            while (text := self.proc.stdout.readline()) not in ("", "\n"):
                out.append(text.rstrip("\n"))
            if text == "":
                raise OSError("llvm-symbolizer ended")
            return out
        except OSError:
            proc, self.proc = self.proc, None
            proc.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            return None

    def line(self, text):
        """`text` (one libFuzzer output line) with a bare NEW_PC address symbolized."""
        m = PC_TABLE.search(text)
        if m:
            self.base = int(m[1], 16) - self.table
        m = NEW_PC_BARE.match(text)
        if not m or self.base is None:
            return text
        entry = int(m[2], 16) - 1
        offset = entry - self.base
        frames = self.frames(offset)
        if len(frames or []) < 2:
            return text
        prefix = m[1]
        function, place = frames[0], frames[1]
        if function == "??" and place.startswith("??"):
            return f"{prefix}{entry:#x} ({self.binary.name}+{offset:#x})\n"
        file, line, column = (place.rsplit(":", 2) + ["0", "0"])[:3]
        place = file + (f":{line}" if line != "0" else "") + (
            f":{column}" if line != "0" and column != "0" else "")
        return f"{prefix}{entry:#x} in {function} {place}\n"


def replay(binary, corpus, done_list, artifacts, extra, log):
    """Runs each input in `corpus` that `done_list` (a file of names) does not list once
    through the sanitizer build `binary`, logging its output (without the per-input lines)
    prefixed with `[asan] ` and a last line `replayed K of N inputs: exit X`; the names of the
    inputs that ran clean are added to `done_list`. Stops at the first failure and returns its
    exit status (0 when all ran clean)."""
    done = set(done_list.read_text().split()) if done_list.exists() else set()
    inputs = sorted(name for name in os.listdir(corpus) if name not in done)
    flags = [a for a in extra if a.startswith("-rss_limit_mb=")]
    rc = executed = 0
    for k in range(0, len(inputs), REPLAY_CHUNK):
        chunk = inputs[k:k + REPLAY_CHUNK]
        cmd = [str(binary), f"-artifact_prefix={artifacts}/", "-timeout=30", *flags,
               *(str(corpus / name) for name in chunk)]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            for line in proc.stdout:
                if line.startswith("Executed "):
                    executed += 1
                elif not line.startswith("Running: "):
                    log.write(f"[asan] {line}")
            rc = proc.wait()
        if rc != 0:
            break
        with open(done_list, "a", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in chunk))
    log.write(f"[asan] replayed {executed} of {len(inputs)} inputs: exit {rc}\n")
    return rc


def main():
    args = sys.argv[1:]
    sanitizer = not (args and args[0] == "--no-sanitizer")
    args = args[0 if sanitizer else 1:]
    if len(args) < 2:
        sys.exit(__doc__)
    target, seconds, extra = args[0], int(args[1]), args[2:]
    series = target if sanitizer else f"{target}.nosan"
    asan_binary = HERE / "target" / TRIPLE / "release" / target
    binary = asan_binary if sanitizer else HERE / "target-nosan" / TRIPLE / "release" / target
    corpus = HERE / "corpus" / series
    # A --no-sanitizer round also reads the sanitizer series' corpus.
    read_only = ([] if sanitizer else [HERE / "corpus" / target]) + [HERE / "seeds" / target]
    artifacts = HERE / "artifacts" / series
    logs = HERE / "logs"
    for d in (corpus, artifacts, logs):
        d.mkdir(parents=True, exist_ok=True)
    for b in {binary, asan_binary}:
        if not b.is_file():
            sys.exit(f"{b}: not built (see the docstring)")
    if not sanitizer and not shutil.which("llvm-symbolizer"):
        sys.exit("--no-sanitizer needs llvm-symbolizer on the PATH")
    earlier = set()
    for old_log in sorted(logs.glob(f"{series}-*.log")):
        earlier |= summarize(old_log)["pcs"]
    symbolizer = None if sanitizer else Symbolizer(binary)
    start = time.time()
    log_path = logs / f"{series}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(start))}.log"
    cmd = [
        str(binary), str(corpus), *map(str, read_only),
        f"-artifact_prefix={artifacts}/", f"-max_total_time={seconds}", "-timeout=30",
        "-print_final_stats=1", "-print_pcs=1", *extra,
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("# " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout:
            if symbolizer:
                line = symbolizer.line(line)
            log.write(f"[{time.time() - start:8.2f}] {line}")
        rc = proc.wait()
        if not sanitizer and rc == 0:
            rc = replay(asan_binary, corpus, logs / f"{series}.replayed", artifacts, extra, log)
    r = summarize(log_path)
    flag_max_len = next((int(a.split("=", 1)[1]) for a in extra if a.startswith("-max_len=")), None)
    summary = {
        "target": series,
        "seconds": round(time.time() - start),
        "executions": r["executions"],
        "inited": dict(zip(("cov", "ft", "corp"), r["inited"])) if r["inited"] else None,
        "end": dict(zip(("cov", "ft", "corp"), r["end"])) if r["end"] else None,
        "last_new_cov_s": round(r["last_new_cov_s"]),
        "last_new_ft_s": round(r["last_new_ft_s"]),
        "new_pcs": len(r["pcs"]),
        "new_pcs_not_in_earlier_rounds": sorted(r["pcs"] - earlier),
        "max_len": flag_max_len or r["max_len"],
        "peak_rss_mb": r["peak_rss_mb"],
        "sanitizer_replay": dict(zip(("ran", "of", "exit"), r["replay"])) if r["replay"] else None,
        "exit": rc,
        "log": str(log_path.relative_to(HERE)),
    }
    print(json.dumps(summary))
    sys.exit(rc)


if __name__ == "__main__":
    main()
