#!/usr/bin/env python3
"""Unit tests of round.py and table.py, the scripts whose figures FUZZING.md reports (a plateau
is a round that summarize() finds no new location in, so its counting is tested here).

    python3 -m unittest discover -s protocol-spec/fuzz -p 'test_*.py'

Standard library only; nothing is fuzzed and no fuzz build is needed: logs, binaries and the
symbolizer are stand-ins written into a temporary directory (shell scripts, run with /bin/sh).
"""
import contextlib
import io
import os
import pathlib
import stat
import struct
import sys
import tempfile
import textwrap
import unittest
from unittest import mock

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import round as rnd  # noqa: E402  (the module, not the builtin)
import table  # noqa: E402

OWN = "/repo/relay/src/"


def write_log(path, body):
    """A round log as round.py writes it: the command line, then timed libFuzzer lines."""
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


CLEAN_ROUND = """
    # /x/relay_http /x/corpus -max_total_time=60 -dict=seeds/protocol.dict
    [    0.01] INFO: Loaded 1 PC tables (100 PCs): 100 [0x5000,0x6000),
    [    1.00] \tNEW_PC: 0x10 in early {own}a.rs:1:1
    [    2.00] #1000\tINITED cov: 100 ft: 200 corp: 50/1Kb exec/s: 0 rss: 100Mb
    [    3.00] \tNEW_PC: 0x20 in bar {own}b.rs:11
    [    3.00] #1200\tNEW    cov: 101 ft: 201 corp: 51/1Kb lim: 4 exec/s: 600 rss: 100Mb
    [    5.00] #1300\tREDUCE cov: 101 ft: 205 corp: 51/1Kb lim: 4 exec/s: 260 rss: 100Mb
    [    6.00] \tNEW_PC: 0xdead
    [    9.00] #1900\tpulse  cov: 101 ft: 205 corp: 51/1Kb lim: 4 exec/s: 211 rss: 100Mb
    [   10.00] #2000\tDONE   cov: 101 ft: 205 corp: 51/1Kb lim: 4 exec/s: 200 rss: 300Mb
    [   10.00] stat::number_of_executed_units: 2000
    [   10.00] stat::peak_rss_mb: 300
""".replace("{own}", OWN)
# The same round of a build without a sanitizer, and the sanitizer replay after it.
REPLAYED_ROUND = CLEAN_ROUND + """\
    [asan] INFO: Seed: 1
    [asan] replayed 5 of 5 inputs: exit 0
"""


class InTempDir(unittest.TestCase):
    """A test case with a fresh temporary directory, `self.dir`, removed after each test."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = pathlib.Path(tmp.name)


class Summarize(InTempDir):

    def test_clean_round(self):
        s = rnd.summarize(write_log(self.dir / "r.log", REPLAYED_ROUND))
        self.assertEqual(s["inited"], (100, 200, 50))
        self.assertEqual(s["end"], (101, 205, 51, 2000))
        self.assertEqual(s["executions"], 2000)
        self.assertTrue(s["done"])
        self.assertFalse(s["finding"])
        # The last new edge is the bare NEW_PC at 6 s; the last new feature the rise of ft at 5 s.
        self.assertEqual(s["last_new_cov_s"], 6.0)
        self.assertEqual(s["last_new_ft_s"], 5.0)
        self.assertEqual(s["pcs"], {f"early {OWN}a.rs:1:1", f"bar {OWN}b.rs:11",
                                    "unsymbolized 0xdead"})
        self.assertEqual(s["peak_rss_mb"], 300)
        self.assertEqual(s["replay"], (5, 5, 0))
        self.assertTrue(s["command"].startswith("/x/relay_http "))

    def test_sanitizer_report_is_a_finding(self):
        log = CLEAN_ROUND.replace(
            "    [   10.00] stat::number",
            "    [    9.50] ==77==ERROR: AddressSanitizer: heap-use-after-free\n"
            "    [   10.00] stat::number")
        self.assertTrue(rnd.summarize(write_log(self.dir / "r.log", log))["finding"])

    def test_failed_replay_is_a_finding(self):
        log = REPLAYED_ROUND.replace("replayed 5 of 5 inputs: exit 0",
                                     "replayed 2 of 5 inputs: exit 1")
        s = rnd.summarize(write_log(self.dir / "r.log", log))
        self.assertTrue(s["finding"])
        self.assertEqual(s["replay"], (2, 5, 1))

    def test_round_stopped_by_hand_is_interrupted_not_a_finding(self):
        log = CLEAN_ROUND.split("    [   10.00] #2000")[0] + (
            "    [    9.50] ==77== libFuzzer: run interrupted; exiting\n")
        s = rnd.summarize(write_log(self.dir / "r.log", log))
        self.assertFalse(s["done"])
        self.assertFalse(s["finding"])
        # No final statistics: the executions are the last status line's.
        self.assertEqual(s["executions"], 1900)

    def test_round_that_never_loaded_its_corpus(self):
        log = CLEAN_ROUND.split("    [    2.00]")[0]
        s = rnd.summarize(write_log(self.dir / "r.log", log))
        self.assertIsNone(s["inited"])
        self.assertIsNone(s["end"])
        self.assertEqual(s["executions"], 0)


class Symbolize(unittest.TestCase):
    """Symbolizer.line with a stand-in for Symbolizer.frames (its answers from llvm-symbolizer)."""

    def symbolizer(self, frames):
        sy = rnd.Symbolizer.__new__(rnd.Symbolizer)
        sy.binary = pathlib.Path("/x/relay_http")
        sy.table = 0x1000
        sy.base = None
        sy.asked = []

        def answer(address):
            sy.asked.append(address)
            return frames
        sy.frames = answer
        return sy

    LOADED = "INFO: Loaded 1 PC tables (10 PCs): 10 [0x401000,0x402000),\n"

    def test_entry_and_offset(self):
        sy = self.symbolizer(["f", "/src/a.rs:12:3"])
        self.assertEqual(sy.line("\tNEW_PC: 0x400011\n"), "\tNEW_PC: 0x400011\n",
                         "no load address before the PC table line")
        self.assertEqual(sy.line(self.LOADED), self.LOADED)
        # The printed address is the table entry plus one; the load address is 0x400000.
        self.assertEqual(sy.line("\tNEW_PC: 0x400011\n"), "\tNEW_PC: 0x400010 in f /src/a.rs:12:3\n")
        self.assertEqual(sy.asked, [0x10])

    def test_zero_line_and_column_left_out(self):
        sy = self.symbolizer(["f", "/src/a.rs:12:0"])
        sy.line(self.LOADED)
        self.assertEqual(sy.line("\tNEW_PC: 0x400011\n"), "\tNEW_PC: 0x400010 in f /src/a.rs:12\n")
        sy = self.symbolizer(["g", "/src/b.rs:0:0"])
        sy.line(self.LOADED)
        self.assertEqual(sy.line("\tNEW_PC: 0x400021\n"), "\tNEW_PC: 0x400020 in g /src/b.rs\n")

    def test_unknown_code_as_binary_and_offset(self):
        sy = self.symbolizer(["??", "??:0:0"])
        sy.line(self.LOADED)
        self.assertEqual(sy.line("\tNEW_PC: 0x400031\n"), "\tNEW_PC: 0x400030 (relay_http+0x30)\n")

    def test_failed_symbolizer_leaves_the_line_bare(self):
        sy = self.symbolizer(None)
        sy.line(self.LOADED)
        self.assertEqual(sy.line("\tNEW_PC: 0x400031\n"), "\tNEW_PC: 0x400031\n")
        # summarize then counts it as a location of its own.
        with tempfile.TemporaryDirectory() as d:
            log = write_log(pathlib.Path(d) / "r.log", "# cmd\n[    1.00] \tNEW_PC: 0x400031\n")
            self.assertEqual(rnd.summarize(log)["pcs"], {"unsymbolized 0x400031"})

    def test_other_lines_unchanged(self):
        sy = self.symbolizer(["f", "/src/a.rs:1:1"])
        sy.line(self.LOADED)
        line = "#1200\tNEW    cov: 101 ft: 201 corp: 51/1Kb\n"
        self.assertEqual(sy.line(line), line)
        self.assertEqual(sy.asked, [])


def fake_elf(path, sancov_pcs):
    """A minimal 64-bit ELF file with sections .text (at 0x1000) and __sancov_pcs."""
    names = b"\0.text\0__sancov_pcs\0.shstrtab\0"
    # ELF header (64 bytes), the section names, then 4 section headers of 64 bytes.
    shoff = 64 + len(names)

    def sh(name, addr, offset=0):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, then 32 bytes round.py does not read
        return struct.pack("<IIQQQ", name, 1, 0, addr, offset) + bytes(32)
    data = bytearray(64)
    data[:4] = b"\x7fELF"
    struct.pack_into("<Q", data, 0x28, shoff)
    struct.pack_into("<HHH", data, 0x3A, 64, 4, 3)
    data += names
    data += sh(0, 0) + sh(1, 0x1000) + sh(7, sancov_pcs) + sh(20, 0, offset=64)
    path.write_bytes(bytes(data))
    return path


class SectionAddress(unittest.TestCase):
    def test_finds_the_named_section(self):
        with tempfile.TemporaryDirectory() as d:
            f = fake_elf(pathlib.Path(d) / "bin", 0x2345)
            self.assertEqual(rnd.section_address(f, "__sancov_pcs"), 0x2345)
            self.assertEqual(rnd.section_address(f, ".text"), 0x1000)
            with self.assertRaises(SystemExit):
                rnd.section_address(f, ".data")


def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class SymbolizerProcess(unittest.TestCase):
    """Symbolizer with a stand-in llvm-symbolizer on PATH: the pipe protocol (one address per
    line in, frames and a blank line out) and what happens when the process ends."""

    # Answers 0x10 as two inlined frames, anything else as unknown; ends at 0x99.
    FAKE = textwrap.dedent(r"""
        #!/bin/sh
        while read -r a; do
          case "$a" in
            0x10) printf 'inner\n/src/a.rs:3:4\nouter\n/src/b.rs:5:6\n\n';;
            0x99) exit 0;;
            *) printf '??\n??:0:0\n\n';;
          esac
        done
        """)

    def test_pipe(self):
        with tempfile.TemporaryDirectory() as d:
            d = pathlib.Path(d)
            executable(d / "llvm-symbolizer", self.FAKE.lstrip("\n"))
            binary = fake_elf(d / "relay_http", 0x1000)
            with mock.patch.dict(os.environ, {"PATH": f"{d}:{os.environ['PATH']}"}):
                sy = rnd.Symbolizer(binary)
            try:
                sy.line("INFO: Loaded 1 PC tables (10 PCs): 10 [0x401000,0x402000),\n")
                # The innermost inlined frame names the location.
                self.assertEqual(sy.line("\tNEW_PC: 0x400011\n"),
                                 "\tNEW_PC: 0x400010 in inner /src/a.rs:3:4\n")
                self.assertEqual(sy.line("\tNEW_PC: 0x400021\n"),
                                 "\tNEW_PC: 0x400020 (relay_http+0x20)\n")
                # The symbolizer ends: this line and every later one stay bare.
                self.assertEqual(sy.line("\tNEW_PC: 0x40009a\n"), "\tNEW_PC: 0x40009a\n")
                self.assertIsNone(sy.proc)
                self.assertEqual(sy.line("\tNEW_PC: 0x400011\n"), "\tNEW_PC: 0x400011\n")
            finally:
                if sy.proc:
                    sy.proc.kill()


class Replay(InTempDir):
    """replay() with a stand-in for the sanitizer build: a script that prints what libFuzzer
    prints for each input it runs, and fails on an input that contains `crash`."""

    FAKE = textwrap.dedent("""\
        #!/bin/sh
        echo "INFO: Seed: 1"
        for a in "$@"; do
          case "$a" in -*) continue;; esac
          echo "Running: $a"
          if grep -q crash "$a"; then echo "==1==ERROR: AddressSanitizer: boom"; exit 1; fi
          echo "Executed $a in 1 ms"
        done
        """)

    def setUp(self):
        super().setUp()
        self.binary = executable(self.dir / "fuzz", self.FAKE)
        self.corpus = self.dir / "corpus"
        self.corpus.mkdir()
        self.done = self.dir / "done"
        self.artifacts = self.dir / "artifacts"

    def run_replay(self):
        log = io.StringIO()
        with mock.patch.object(rnd, "REPLAY_CHUNK", 2):
            rc = rnd.replay(self.binary, self.corpus, self.done, self.artifacts,
                            ["-rss_limit_mb=4096", "-dict=x"], log)
        return rc, log.getvalue().splitlines()

    def test_runs_only_inputs_not_yet_listed_and_lists_them(self):
        for name in "abcde":
            (self.corpus / name).write_text("ok")
        self.done.write_text("a\n")
        rc, lines = self.run_replay()
        self.assertEqual(rc, 0)
        self.assertEqual(lines[-1], "[asan] replayed 4 of 4 inputs: exit 0")
        self.assertIn("[asan] INFO: Seed: 1", lines)
        self.assertFalse(any("Running: " in l or "Executed " in l for l in lines))
        self.assertEqual(sorted(self.done.read_text().split()), list("abcde"))
        rc, lines = self.run_replay()
        self.assertEqual(rc, 0)
        self.assertEqual(lines[-1], "[asan] replayed 0 of 0 inputs: exit 0")

    def test_stops_at_a_failure_and_does_not_list_its_chunk(self):
        for name in "abcde":
            (self.corpus / name).write_text("crash" if name == "c" else "ok")
        rc, lines = self.run_replay()
        self.assertEqual(rc, 1)
        # Chunks of 2: a and b ran clean; c failed, so c and d are not listed; e never ran.
        self.assertEqual(lines[-1], "[asan] replayed 2 of 5 inputs: exit 1")
        self.assertIn("[asan] ==1==ERROR: AddressSanitizer: boom", lines)
        self.assertEqual(sorted(self.done.read_text().split()), ["a", "b"])


class Table(InTempDir):
    def setUp(self):
        super().setUp()
        self.logs = self.dir

    def rows(self):
        out = io.StringIO()
        with mock.patch.object(table, "LOGS", self.logs), mock.patch.object(table, "REPO", "/repo/"), \
                contextlib.redirect_stdout(out):
            table.main()
        return out.getvalue().splitlines()[2:]

    def test_new_locations_are_counted_against_earlier_rounds(self):
        write_log(self.logs / "relay_http-20260101T000000.log", CLEAN_ROUND)
        second = CLEAN_ROUND.replace("bar " + OWN + "b.rs:11", "baz " + OWN + "c.rs:2") \
            .replace("\tNEW_PC: 0xdead", "\tNEW_PC: 0x30 in h /cargo/registry/x.rs:3")
        write_log(self.logs / "relay_http-20260101T010000.log", second)
        write_log(self.logs / "relay_http-20260101T020000.log", CLEAN_ROUND)
        rows = self.rows()
        self.assertEqual(len(rows), 3)
        cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
        self.assertEqual([c[1] for c in cells], ["1 (dict)", "2 (dict)", "3 (dict)"])
        self.assertEqual(cells[0][6], "all (first round)")
        # Round 2: baz (own crate) and h (a dependency) are new; round 3 finds nothing new.
        self.assertEqual(cells[1][6], "2 (1)")
        self.assertEqual(cells[2][6], "0 (0)")
        self.assertEqual(cells[0][4], "100 / 200 → 101 / 205")
        self.assertEqual(cells[0][3], "2,000")
        self.assertEqual(cells[0][8], "none")

    def test_no_sanitizer_series_and_its_replay(self):
        write_log(self.logs / "relay_http.nosan-20260101T000000.log", REPLAYED_ROUND)
        write_log(self.logs / "relay_http.nosan-20260101T010000.log", CLEAN_ROUND)
        rows = self.rows()
        self.assertEqual(len(rows), 2)
        self.assertIn("`relay_http` (no sanitizer)", rows[0])
        self.assertIn("none (5 inputs clean under ASan)", rows[0])
        self.assertIn("none (**not replayed under ASan**)", rows[1])


if __name__ == "__main__":
    unittest.main()
