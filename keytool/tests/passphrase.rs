//! Key files encrypted with a passphrase (FORMICA_PASSPHRASE): the seed is never written in the
//! clear, the file cannot be used without the passphrase or with a wrong one, and it works with it.
//! The same holds for encryption private keys: sealed messages open with the passphrase set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

fn kt(home: &std::path::Path, pass: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keytool"));
    c.arg("--home")
        .arg(home)
        .args(args)
        .env_remove("FORMICA_PASSPHRASE");
    if let Some(p) = pass {
        c.env("FORMICA_PASSPHRASE", p);
    }
    c.output().unwrap()
}

#[test]
fn an_encrypted_key_file_needs_its_passphrase() {
    let home = std::env::temp_dir().join(format!("formica-kt-pass-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let made = kt(&home, Some("correct horse"), &["--json", "keygen"]);
    assert!(made.status.success());
    let made = String::from_utf8_lossy(&made.stdout).into_owned();
    let file = std::fs::read_to_string(home.join("identities/default.json")).unwrap();
    assert!(
        file.contains("\"seed_enc\"") && !file.contains("\"seed\""),
        "{file}"
    );

    let none = kt(&home, None, &["whoami"]);
    assert_eq!(none.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&none.stderr).contains("FORMICA_PASSPHRASE"));
    let wrong = kt(&home, Some("wrong"), &["whoami"]);
    assert_eq!(wrong.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));

    let right = kt(&home, Some("correct horse"), &["--json", "whoami"]);
    assert!(right.status.success());
    let right = String::from_utf8_lossy(&right.stdout).into_owned();
    let key = |s: &str| s.split("\"public_key\":\"").nth(1).unwrap()[..64].to_owned();
    assert_eq!(key(&right), key(&made));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn encryption_key_files_are_encrypted_and_open_sealed_messages_with_the_passphrase() {
    let dir = std::env::temp_dir().join(format!("formica-kt-pass-enc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = common::start_relay(&dir);
    let run = |who: &str, pass: Option<&str>, args: &[&str]| {
        let mut all = vec!["--relay", relay.url.as_str(), "--json"];
        all.extend_from_slice(args);
        kt(&dir.join(who), pass, &all)
    };
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        common::lines(&o.stdout)
    };
    let pass = Some("correct horse");
    ok(run("alice", pass, &["register", "@alice"]));
    let reg = ok(run("bob", pass, &["register", "@bob"]));
    let kid = common::s(&reg[0], &["enc_key_id"]).to_owned();
    let file = std::fs::read_to_string(dir.join(format!("bob/identities/default.enc-{kid}.json")))
        .unwrap();
    assert!(
        file.contains("\"secret_enc\"") && !file.contains("\"secret\""),
        "{file}"
    );
    ok(run(
        "bob",
        pass,
        &["contacts", "add", "@alice", "--level", "message"],
    ));
    let sent = ok(run("alice", pass, &["send", "@bob", "under lock"]));
    assert_eq!(common::get(&sent[0], &["sealed"]).as_bool(), Some(true));
    let inbox = ok(run("bob", pass, &["inbox"]));
    assert_eq!(common::s(&inbox[0], &["payload", "text"]), "under lock");
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
