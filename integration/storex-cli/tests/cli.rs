//! Drives the `storex` binary as a user would.

use std::process::Command;

fn storex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_storex"))
}

#[test]
fn demo_shows_two_devices_converging() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = storex()
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run storex");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("phone holds 3 notes"), "{stdout}");
    assert!(stdout.contains("laptop holds 3 notes"), "{stdout}");
    assert!(
        stdout.contains("[x] buy milk (done)"),
        "the later edit wins: {stdout}"
    );
    assert!(stdout.contains("converged"), "{stdout}");
    for file in ["phone.db", "laptop.db", "shared-log.db"] {
        assert!(dir.path().join(file).exists(), "{file} kept in --dir");
    }
}

#[test]
fn bad_arguments_get_a_clear_message() {
    let output = storex().arg("dmeo").output().expect("run storex");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unrecognized subcommand 'dmeo'"),
        "{stderr}"
    );
}

#[test]
fn an_unusable_folder_is_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").expect("write");
    let output = storex()
        .args(["demo", "--dir"])
        .arg(&file)
        .output()
        .expect("run storex");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: creating "), "{stderr}");
}

#[test]
fn log_and_status_inspect_a_device() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let demo = storex()
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    assert!(demo.status.success());
    let phone = dir.path().join("phone.db");
    let log = storex()
        .args(["log", "--limit", "3", "--db"])
        .arg(&phone)
        .output()
        .expect("run log");
    let stdout = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    // The phone's own three changes; the laptop's two went into the versions index.
    assert!(stdout.starts_with("3 entries in the log:"), "{stdout}");
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(stdout.contains("and the versions of 2 objects"), "{stdout}");
    assert!(stdout.contains(" note"), "{stdout}");
    let status = storex()
        .args(["status", "--db"])
        .arg(&phone)
        .output()
        .expect("run status");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("not yet pushed:  0"), "{stdout}");
    assert!(stdout.contains("log entries:     3"), "{stdout}");
    assert!(stdout.contains("versioned:       2 objects"), "{stdout}");
    let missing = storex()
        .args(["status", "--db", "/nonexistent.db"])
        .output()
        .expect("run status");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "error: no database at /nonexistent.db"
    );
}
