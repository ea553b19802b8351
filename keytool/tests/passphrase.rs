//! Key files encrypted with a passphrase (FORMICA_PASSPHRASE): the seed is never written in the
//! clear, the file cannot be used without the passphrase or with a wrong one, and it works with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
