//! Conventions users expect of a command-line tool: shell completions and a man page
//! generated from the CLI definition, `apply --concurrency` overriding the playbook, and no
//! ANSI colour in logs that go to a file or a pipe.

mod support;

use support::{Lab, FULL_FLOW, TEST_POLICY};

fn roomkey(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef roomkey"),
        ("fish", "complete -c roomkey"),
    ] {
        let out = roomkey(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(marker), "{shell}: {text}");
        // Every subcommand is offered, the new ones included.
        for sub in ["apply", "status", "init", "secret", "cert"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = roomkey(&["completions", "tcsh"]);
    assert!(!out.status.success());

    let out = roomkey(&["man"]);
    assert!(out.status.success());
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH roomkey"),
        "{man}"
    );
    assert!(man.contains(".TH roomkey 1"), "{man}");
    assert!(
        man.contains("status") && man.contains("completions"),
        "{man}"
    );
    // The bash script is valid shell.
    if std::process::Command::new("bash")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roomkey.bash");
        std::fs::write(&path, roomkey(&["completions", "bash"]).stdout).unwrap();
        let check = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_flag_overrides_the_playbook_and_logs_stay_plain() {
    let lab = Lab::start(3, 63, |_| Default::default()).await;
    // The playbook asks for 8 at once; --concurrency 1 must work the rooms one by one.
    let pb = support::playbook(lab.path(), "external-identity", TEST_POLICY, FULL_FLOW);
    let out = lab
        .roomkey(&[
            "apply",
            "-i",
            lab.inventory.to_str().unwrap(),
            pb.to_str().unwrap(),
            "--output",
            "json",
            "--concurrency",
            "1",
        ])
        .env("RUST_LOG", "roomkey=debug")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut running = 0i32;
    let mut started = 0;
    for e in &events {
        match e["event"].as_str().unwrap() {
            "device-started" => {
                running += 1;
                started += 1;
                assert_eq!(running, 1, "two devices at once with --concurrency 1");
            }
            "device-finished" => running -= 1,
            _ => {}
        }
    }
    assert_eq!(started, 3);
    // Debug logs went to a pipe: plain text, no ANSI escape.
    assert!(!stderr.is_empty(), "RUST_LOG=roomkey=debug logged nothing");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");

    // A value out of range is refused before anything runs.
    let (code, _, err) = lab.apply(&pb, &["--concurrency", "0"]).await;
    assert_eq!(code, 1, "usage error, invalid input: {err}");
}
