//! The `timgate` binary: configuration refused before binding, and `timgate sign`.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use timgate::config::SecretKey;
use timgate::usersig;

fn timgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_timgate"))
}

/// Writes `text` as a config file, whose `listen` is a port this test holds: a gateway that
/// bound before validating would report the port in use instead of the config error.
fn refused(text: &str) -> String {
    refused_on("127.0.0.1", text)
}

/// `refused`, listening on `host` at the held port's number (binding `0.0.0.0` there fails
/// too: the held loopback port is taken on every address).
fn refused_on(host: &str, text: &str) -> String {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = std::env::temp_dir().join(format!(
        "timgate-cli-{}-{}.toml",
        std::process::id(),
        rand::random::<u32>()
    ));
    let text = format!(
        "[server]\nlisten = \"{host}:{}\"\n{text}",
        held.local_addr().unwrap().port()
    );
    std::fs::write(&path, text).unwrap();
    let out = timgate().arg("--config").arg(&path).output().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

const APP: &str =
    "[[apps]]\nsdkappid = 1400000001\nidentifier = \"admin\"\nregion = \"singapore\"\n";

#[test]
fn a_listen_off_loopback_without_callers_refuses_to_start() {
    let err = refused_on("0.0.0.0", &format!("{APP}secret_key = \"a\"\n"));
    assert!(
        err.contains("server.listen") && err.contains("allow_anonymous"),
        "{err}"
    );
}

#[test]
fn two_secret_sources_are_refused_before_binding() {
    let err = refused(&format!(
        "{APP}secret_key = \"a\"\nsecret_key_file = \"/k\"\n"
    ));
    assert!(
        err.contains("apps[0].secret_key") && err.contains("exactly one"),
        "{err}"
    );
}

#[test]
fn an_unknown_region_is_refused_before_binding() {
    let err = refused(&format!(
        "{}secret_key = \"a\"\n",
        APP.replace("singapore", "atlantis")
    ));
    assert!(
        err.contains("apps[0].region") && err.contains("atlantis"),
        "{err}"
    );
}

#[test]
fn a_missing_key_is_refused_before_binding() {
    let err = refused(APP);
    assert!(
        err.contains("apps[0].secret_key") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn an_unset_key_variable_is_refused_without_printing_anything_secret() {
    let err = refused(&format!(
        "{APP}secret_key_env = \"TIMGATE_TEST_UNSET_VAR\"\n"
    ));
    assert!(
        err.contains("apps[0].secret_key_env") && err.contains("TIMGATE_TEST_UNSET_VAR"),
        "{err}"
    );
}

#[test]
fn a_configuration_file_over_its_cap_is_refused_before_binding() {
    // Valid TOML, were it read: 1 MiB of comments after a good app.
    let line = "# a comment line of sixty-four bytes, repeated past the file cap\n";
    let padding = line.repeat(1024 * 1024 / line.len() + 1);
    let err = refused(&format!("{APP}secret_key = \"a\"\n{padding}"));
    assert!(
        err.contains(": config: ")
            && err.contains(
                ".toml is larger than 1 MiB, the most timgate reads of a configuration file"
            ),
        "{err}"
    );
}

#[test]
fn sign_prints_a_token_that_verifies() {
    let out = timgate()
        .args([
            "sign",
            "--sdkappid",
            "1400000001",
            "--identifier",
            "ops",
            "--expire",
            "300",
        ])
        .env("TIMGATE_SECRET_KEY", "cli-key")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = usersig::verify(
        &SecretKey::new("cli-key"),
        token.trim(),
        1400000001,
        "ops",
        usersig::unix_now(),
    )
    .expect("the printed token verifies");
    assert_eq!(claims.expire, 300);
}

#[test]
fn sign_without_a_key_says_what_is_missing() {
    let out = timgate()
        .args(["sign", "--sdkappid", "1", "--identifier", "a"])
        .env_remove("TIMGATE_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TIMGATE_SECRET_KEY"));
}
