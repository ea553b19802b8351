#!/usr/bin/env python3
"""Runs one fuzzing round of one target and summarises it, for the plateau rounds in FUZZING.md.

    python3 round.py <target> <seconds> [extra libFuzzer flags...]

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
Standard library only.
"""
import json
import pathlib
import re
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)")
TIMED = re.compile(r"^\[\s*([\d.]+)\] (.*)")
FINDING = re.compile(r"ERROR: |deadly signal|SUMMARY: |==\d+==")
# What libFuzzer prints when it is stopped by SIGINT (by hand): not a finding.
STOPPED = "libFuzzer: run interrupted; exiting"


def summarize(log_path):
    """A round's figures from its log (as written below: each line after the command line
    prefixed with the seconds since the start). `inited` and `end` are None when the corpus
    replay never finished; `done` is false for a round that was interrupted (stopped by hand
    with SIGINT, or the session ended); `executions` is the final statistics' count, or the
    last status line's when the log has none (the session ended); `command` is the libFuzzer
    command line."""
    inited = last = execs = peak_rss_mb = max_len = None
    t = last_cov_t = last_ft_t = 0.0
    pcs = set()
    finding = stopped = False
    command = ""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("# ") and not command:
                command = line[2:].strip()
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
            elif "NEW_PC" in body and " in " in body:
                # The code location: the text after ' in ' (function and file:line).
                pcs.add(body.split(" in ", 1)[1].strip())
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
    }


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    target, seconds, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    binary = HERE / "target" / "x86_64-unknown-linux-gnu" / "release" / target
    corpus = HERE / "corpus" / target
    seeds = HERE / "seeds" / target
    artifacts = HERE / "artifacts" / target
    logs = HERE / "logs"
    for d in (corpus, artifacts, logs):
        d.mkdir(parents=True, exist_ok=True)
    earlier = set()
    for old_log in sorted(logs.glob(f"{target}-*.log")):
        earlier |= summarize(old_log)["pcs"]
    start = time.time()
    log_path = logs / f"{target}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(start))}.log"
    cmd = [
        str(binary), str(corpus), str(seeds),
        f"-artifact_prefix={artifacts}/", f"-max_total_time={seconds}", "-timeout=30",
        "-print_final_stats=1", "-print_pcs=1", *extra,
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("# " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout:
            log.write(f"[{time.time() - start:8.2f}] {line}")
        rc = proc.wait()
    r = summarize(log_path)
    flag_max_len = next((int(a.split("=", 1)[1]) for a in extra if a.startswith("-max_len=")), None)
    summary = {
        "target": target,
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
        "exit": rc,
        "log": str(log_path.relative_to(HERE)),
    }
    print(json.dumps(summary))
    sys.exit(rc)


if __name__ == "__main__":
    main()
