#!/usr/bin/env python3
"""Prints the rounds table of FUZZING.md from the round logs that round.py wrote in logs/.

    python3 table.py

Rounds are read per target in the order they ran; logs/superseded/ holds rounds of an earlier
build, listed separately. A round whose log has no final statistics (interrupted) is listed with
the last status line's figures. "New locations" are the NEW_PC locations no earlier round of the
same build found, in all code and, in brackets, in the project's crates (protocol-spec/src, relay/src). A log line with a
sanitizer or libFuzzer error marks the round as a finding. Standard library only.
"""
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = str(HERE.parents[1]) + "/"
base = HERE / "logs"
STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)")
TIMED = re.compile(r"^\[\s*([\d.]+)\] (.*)")
FINDING = re.compile(r"ERROR: |deadly signal|SUMMARY: |==\d+==")
OWN = ("protocol-spec/src/", "relay/src/")
TARGETS = ["parse_envelope", "keylog", "request_auth", "relay_http"]


def summarize(path):
    """One round's figures, as round.py computes them, from its log."""
    inited = last = execs = rss = None
    t = last_cov_t = 0.0
    pcs = set()
    finding = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = TIMED.match(line.rstrip("\n"))
            if not m:
                continue
            t, body = float(m[1]), m[2]
            finding = finding or bool(FINDING.search(body))
            s = STATUS.match(body)
            if s:
                n, kind, cov, ft = int(s[1]), s[2], int(s[3]), int(s[4])
                if kind == "INITED":
                    inited = (cov, ft)
                elif inited and last and cov > last[0]:
                    last_cov_t = t
                if inited:
                    last = (cov, ft, n)
            elif "NEW_PC" in body and " in " in body:
                pcs.add(body.split(" in ", 1)[1].strip())
                if inited:
                    last_cov_t = t
            elif body.startswith("stat::number_of_executed_units:"):
                execs = int(body.split(":")[-1])
            elif body.startswith("stat::peak_rss_mb:"):
                rss = int(body.split(":")[-1])
    if inited is None or last is None:
        return None
    return {
        "inited": inited, "end": last, "seconds": t, "done": execs is not None,
        "execs": execs if execs is not None else last[2], "rss": rss, "finding": finding,
        "pcs": pcs, "last_cov_t": last_cov_t,
    }


def main():
    print("| Target | Round | Seconds | Executions | cov / ft at start → end | Last new edge "
          "| New locations | Peak RSS | Findings |")
    print("|---|---|---|---|---|---|---|---|---|")
    for target in TARGETS:
        for d, note in ((base / "superseded", " (earlier build)"), (base, "")):
            earlier = set()
            rounds = [s for s in map(summarize, sorted(d.glob(f"{target}-*.log"))) if s]
            for i, s in enumerate(rounds, 1):
                new = s["pcs"] - earlier
                earlier |= s["pcs"]
                own = sum(1 for pc in new if any(REPO + d in pc for d in OWN))
                (c0, f0), (c1, f1, _) = s["inited"], s["end"]
                print(
                    f"| `{target}`{note} | {i} "
                    f"| {round(s['seconds'])}{'' if s['done'] else ' (interrupted)'} "
                    f"| {s['execs']:,} | {c0:,} / {f0:,} → {c1:,} / {f1:,} "
                    f"| {str(round(s['last_cov_t'])) + ' s' if s['last_cov_t'] else 'none'} "
                    f"| {'all (first round)' if i == 1 else f'{len(new)} ({own})'} "
                    f"| {str(s['rss']) + ' MB' if s['rss'] else '—'} "
                    f"| {'**see log**' if s['finding'] else 'none'} |"
                )


if __name__ == "__main__":
    sys.exit(main())
