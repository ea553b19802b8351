//! The `conformance` binary: clap glue over the library (`run`, `coverage`, `list`).

use clap::{Parser, Subcommand, ValueEnum};
use formica_conformance::{coverage, report, runner, Level};
use std::path::PathBuf;
use std::process::ExitCode;

/// Formica conformance suite: checks a relay over HTTP against protocol-spec/SPEC.md.
///
/// Exit codes: 0 no MUST case failed; 1 a MUST case failed (and is not listed in
/// --expected-failures); 2 usage or setup error; 3 the expected-failures file is stale.
#[derive(Debug, Parser)]
#[command(name = "conformance", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LevelArg {
    /// MUST cases only.
    Must,
    /// MUST and SHOULD cases.
    Should,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the suite against a relay. Run the relay under test with a low proof-of-work
    /// difficulty (for example `relay serve --pow-difficulty 8`): the suite registers about
    /// 270 agents.
    Run {
        /// Base URL of the relay under test, e.g. http://127.0.0.1:7070.
        #[arg(long)]
        relay: String,
        /// Base URL of a second relay federated with the first (federation cases).
        #[arg(long)]
        peer: Option<String>,
        /// Which cases to run by level.
        #[arg(long, value_enum, default_value = "should")]
        level: LevelArg,
        /// Print one JSON object per case (JSON Lines) on stdout instead of the text report.
        #[arg(long)]
        json: bool,
        /// Also write a JUnit XML report to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Cases expected to fail: one `CASE-ID  reason` per line, `#` comments.
        #[arg(long, value_name = "FILE")]
        expected_failures: Option<PathBuf>,
        /// Only cases whose id starts with PATTERN, or that check requirement PATTERN
        /// (repeatable).
        #[arg(long, value_name = "PATTERN")]
        only: Vec<String>,
        /// Cases run at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Print the requirement coverage table: every SPEC.md id, covered / n/a (with the reason)
    /// / missing. Exits 1 if a MUST requirement is missing.
    Coverage {
        /// One JSON object per requirement instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// List the cases with their requirement ids and level.
    List,
}

/// Writes to stdout; a closed pipe (`conformance list | head`) ends the output quietly.
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if o.write_all(text.as_bytes())
        .and_then(|_| o.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            relay,
            peer,
            level,
            json,
            junit,
            expected_failures,
            only,
            jobs,
        } => {
            let expected = match &expected_failures {
                None => Default::default(),
                Some(p) => match std::fs::read_to_string(p)
                    .map_err(|e| e.to_string())
                    .and_then(|t| report::parse_expected(&t))
                {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("conformance: {}: {e}", p.display());
                        return ExitCode::from(2);
                    }
                },
            };
            let opts = runner::Options {
                relay,
                peer,
                level: match level {
                    LevelArg::Must => Level::Must,
                    LevelArg::Should => Level::Should,
                },
                jobs,
                only,
                progress: false,
            };
            let mut rep = match runner::run(&opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("conformance: {e}");
                    return ExitCode::from(2);
                }
            };
            rep.apply_expected(&expected);
            if json {
                out(&rep.to_jsonl());
            } else {
                out(&rep.human());
            }
            if let Some(p) = junit {
                if let Err(e) = std::fs::write(&p, rep.to_junit()) {
                    eprintln!("conformance: {}: {e}", p.display());
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(u8::try_from(rep.exit_code()).unwrap_or(1))
        }
        Cmd::Coverage { json } => {
            let cases = formica_conformance::cases::all();
            let rows = coverage::table(&cases);
            if json {
                for r in &rows {
                    let mut o = formica_protocol::Object::new();
                    o.insert("id", r.id.clone().into());
                    o.insert("level", r.level.as_str().into());
                    match &r.state {
                        coverage::State::Covered(cs) => {
                            o.insert("state", "covered".into());
                            o.insert(
                                "cases",
                                formica_protocol::Value::Array(
                                    cs.iter().map(|c| c.clone().into()).collect(),
                                ),
                            );
                        }
                        coverage::State::NotApplicable(why) => {
                            o.insert("state", "n/a".into());
                            o.insert("reason", why.clone().into());
                        }
                        coverage::State::Missing => {
                            o.insert("state", "missing".into());
                        }
                    }
                    let line =
                        formica_protocol::canon::canonicalize(&formica_protocol::Value::Object(o));
                    out(&format!("{}\n", String::from_utf8_lossy(&line)));
                }
            } else {
                out(&coverage::render(&cases));
            }
            let (_, _, missing) = coverage::totals(&rows, Level::Must);
            if missing > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Cmd::List => {
            for c in formica_conformance::cases::all() {
                out(&format!(
                    "{:<48} {:<6} [{}] {}\n",
                    c.id,
                    c.level().as_str(),
                    c.all_reqs().join(" "),
                    c.title
                ));
            }
            ExitCode::SUCCESS
        }
    }
}
