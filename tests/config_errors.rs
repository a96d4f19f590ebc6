//! Every bad config fixture gives exactly its expected messages (file:line:col, one per
//! problem, all at once) and exit code 64; the shipped configs pass `--check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn check(config: &str) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sidestream"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--check-config", "--config", config])
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn every_fixture_reports_exactly_its_expected_errors_with_exit_64() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 8, "fixtures present");
    for fixture in fixtures {
        let name = fixture.file_name().unwrap().to_str().unwrap().to_string();
        let relative = format!("tests/fixtures/config/{name}");
        let expected = std::fs::read_to_string(fixture.with_extension("expected")).unwrap();
        let (code, stdout, stderr) = check(&relative);
        assert_eq!(code, Some(64), "{name}");
        assert_eq!(stdout, "", "{name}");
        assert_eq!(stderr, expected, "{name}");
        // Every error line is located.
        for line in stderr.lines().filter(|l| l.contains(": error: ")) {
            let location = line.split(": error: ").next().unwrap();
            let mut parts = location.rsplitn(3, ':');
            let column: usize = parts.next().unwrap().parse().unwrap();
            let row: usize = parts.next().unwrap().parse().unwrap();
            assert!(row >= 1 && column >= 1, "{line}");
        }
    }
}

#[test]
fn several_errors_in_one_file_are_all_reported() {
    let (_, _, stderr) = check("tests/fixtures/config/many_errors.toml");
    assert_eq!(stderr.matches(": error: ").count(), 8);
    assert!(stderr.ends_with("8 error(s) in configuration\n"));
}

#[test]
fn cluster_errors_never_quote_the_redis_password() {
    let (code, _, stderr) = check("tests/fixtures/config/cluster.toml");
    assert_eq!(code, Some(64));
    assert!(stderr.contains("`redis_url` uses TLS (rediss://)"), "{stderr}");
    assert!(!stderr.contains("not-printed-secret"), "{stderr}");
}

#[test]
fn shipped_configs_are_valid() {
    for config in ["config/demo.toml", "config/example.toml"] {
        let (code, stdout, stderr) = check(config);
        assert_eq!(code, Some(0), "{config}: {stderr}");
        assert!(stdout.contains(": ok ("), "{stdout}");
    }
}

#[test]
fn a_missing_file_is_a_config_error_too() {
    let (code, _, stderr) = check("tests/fixtures/config/does-not-exist.toml");
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("does-not-exist.toml:1:1: error: cannot read the file"),
        "{stderr}"
    );
}
