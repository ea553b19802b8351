#!/usr/bin/env python3
"""Prints the rounds table of FUZZING.md from the round logs that round.py wrote in logs/.

    python3 table.py

Rounds are read per target in the order they ran; logs/superseded/<build>/ holds the rounds of
an earlier build (the directory's name, with spaces for hyphens, labels them), listed before the
current build's, earliest build first, and counted separately. A round whose log has no final
statistics (the session ended) or that was stopped by hand (SIGINT; not a finding) is listed as
interrupted, with the last status line's figures (executions from the final statistics where the
log has them). "New locations" are the NEW_PC locations no earlier round of the same build
found, in all code and, in brackets, in the project's crates (protocol-spec/src, relay/src).
"(dict)" marks a round run with a -dict= dictionary. A log line with a sanitizer or libFuzzer
error marks the round as a finding. Rounds of a build without a sanitizer (round.py
--no-sanitizer, logs <target>.nosan-*) are a series of their own, labelled "no sanitizer", and
their Findings cell says how many inputs the sanitizer build ran clean after the round (those
the round added, and any a round before it left unreplayed); a failed replay is a finding. The
figures are those of round.py's `summarize`. Standard library only.
"""
import pathlib
import sys

from round import summarize

HERE = pathlib.Path(__file__).resolve().parent
REPO = str(HERE.parents[1]) + "/"
LOGS = HERE / "logs"
OWN = ("protocol-spec/src/", "relay/src/")
TARGETS = ["parse_envelope", "keylog", "request_auth", "parse_profile", "parse_status", "parse_entry", "parse_batch",
           "parse_sealed", "directory_query", "relay_http", "relay_federation"]


def main():
    print("| Target | Round | Seconds | Executions | cov / ft at start → end | Last new edge "
          "| New locations | Peak RSS | Findings |")
    print("|---|---|---|---|---|---|---|---|---|")
    old = LOGS / "superseded"
    dirs = [d for d in old.iterdir() if d.is_dir()] if old.is_dir() else []
    # In the order the builds ran: by the name (start time) of each one's first log.
    dirs.sort(key=lambda d: min((p.name.split("-", 1)[-1] for p in d.glob("*.log")), default=""))
    builds = [(d, f" ({d.name.replace('-', ' ')})") for d in dirs] + [(LOGS, "")]
    series = [(t, "") for t in TARGETS] + [(f"{t}.nosan", " (no sanitizer)") for t in TARGETS]
    for name, label in series:
        target = name.split(".")[0]
        for d, build in builds:
            note = label + build
            earlier = set()
            logs = sorted(d.glob(f"{name}-*.log"))
            # A round that ended before its corpus was replayed is listed only if it failed.
            rounds = [s for s in map(summarize, logs) if s["inited"] and s["end"] or s["finding"]]
            for i, s in enumerate(rounds, 1):
                new = s["pcs"] - earlier
                earlier |= s["pcs"]
                own = sum(1 for pc in new if any(REPO + o in pc for o in OWN))
                if s["inited"] and s["end"]:
                    (c0, f0, _), (c1, f1, _, _) = s["inited"], s["end"]
                    coverage = f"{c0:,} / {f0:,} → {c1:,} / {f1:,}"
                else:
                    coverage = "corpus not loaded"
                findings = "**see log**" if s["finding"] else "none"
                if s["replay"] and not s["finding"]:
                    findings += f" ({s['replay'][0]:,} inputs clean under ASan)"
                elif label and s["done"] and not s["finding"]:
                    findings += " (**not replayed under ASan**)"
                print(
                    f"| `{target}`{note} | {i}{' (dict)' if ' -dict=' in s['command'] else ''} "
                    f"| {round(s['seconds'])}{'' if s['done'] else ' (interrupted)'} "
                    f"| {s['executions']:,} "
                    f"| {coverage} "
                    f"| {str(round(s['last_new_cov_s'])) + ' s' if s['last_new_cov_s'] else 'none'} "
                    f"| {'all (first round)' if i == 1 else f'{len(new)} ({own})'} "
                    f"| {str(s['peak_rss_mb']) + ' MB' if s['peak_rss_mb'] else '—'} "
                    f"| {findings} |"
                )


if __name__ == "__main__":
    sys.exit(main())
