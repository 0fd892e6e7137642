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
