//! `roomkey probe` against the simulator: every probed behaviour matches the device
//! catalogue on a default device; on a device playing the older ExternalIdentity form the
//! difference is named; the transcript holds the exchange and no secret.

mod support;

use roomkey::sim::{FaultPlan, Variants};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_matches_the_catalogue_and_names_a_variant() {
    let lab = Lab::start(2, 63, |i| FaultPlan {
        variants: if i == 1 {
            Variants {
                external_identity: roomkey::sim::variants::IdentityForm::Seed,
                ..Variants::default()
            }
        } else {
            Variants::default()
        },
        ..FaultPlan::default()
    })
    .await;
    let inv = lab.inventory.to_str().unwrap().to_string();
    let transcript = lab.path().join("probe.txt");
    let out = lab
        .roomkey(&[
            "probe",
            "-i",
            &inv,
            "--limit",
            "room-01",
            "--accept-new-host-keys",
            "--transcript",
            transcript.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for entry in [
        "login.banner",
        "status.uptime",
        "status.external-identity",
        "show.fields",
        "reply.unknown-command",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(entry) && l.contains("matches")),
            "{entry}: {stdout}"
        );
    }
    assert!(!stdout.contains("differs"), "{stdout}");
    let text = std::fs::read_to_string(&transcript).unwrap();
    assert!(text.contains("> xStatus Conference EndToEndEncryption ExternalIdentity"));
    assert!(
        text.contains("< *s Conference EndToEndEncryption ExternalIdentity Status: NotConfigured")
    );
    assert!(!text.contains(PASSWORD), "no secret in the transcript");
    // Only read-only commands reached the device.
    let snap = lab.snapshot("room-01").await;
    assert!(
        snap.commands.iter().all(|c| {
            let l = c.line.to_ascii_lowercase();
            l.starts_with("echo")
                || l.starts_with("xstatus")
                || l.contains("show")
                || l.contains("list")
        }),
        "{:?}",
        snap.commands
    );

    // The older node form is named as a difference.
    let out = lab
        .roomkey(&[
            "probe",
            "-i",
            &inv,
            "--limit",
            "room-02",
            "--accept-new-host-keys",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("status.external-identity")
                && l.contains("differs")
                && l.contains("older")),
        "{stdout}"
    );
    lab.fleet.unwrap().shutdown().await;
}
