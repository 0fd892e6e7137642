//! The notes example runs to the end and both devices converge at every step.

#[test]
fn the_notes_example_converges() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_notes"))
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("both devices agree").count(), 3, "{stdout}");
    let last = stdout
        .split("the laptop deleted one")
        .nth(1)
        .expect("the last step");
    assert!(last.contains("laptop has 2 notes"), "{stdout}");
    assert!(
        last.contains("- groceries for Sunday: milk, bread"),
        "{stdout}"
    );
    assert!(
        !last.contains("- ideas:"),
        "the deleted note is gone: {stdout}"
    );
}
