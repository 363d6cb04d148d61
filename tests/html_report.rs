//! The HTML reports (`apply --report-html`, `status --html`) rendered by a real headless
//! browser (Debian's `chromium`): the page the browser builds has one row per device, the
//! failing step and the device's reason as text (a reason carrying markup stays text), the
//! expiry chart's bars, and it renders to a screenshot. Without chromium the test says so and
//! passes (`.ci/run` installs it).

mod support;

use std::path::{Path, PathBuf};

use roomkey::sim::faults::ErrorRule;
use roomkey::sim::FaultPlan;
use support::{Lab, FULL_FLOW, TEST_POLICY};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Runs headless chromium on a local file; returns the DOM it built (after parsing, styles
/// and layout) and writes a screenshot.
fn render(browser: &Path, page: &Path, screenshot: &Path, profile: &Path) -> String {
    let common = [
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        format!("--user-data-dir={}", profile.display()),
        "--window-size=1280,1024".into(),
    ];
    let url = format!("file://{}", page.display());
    let out = std::process::Command::new(browser)
        .args(&common)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shot = std::process::Command::new(browser)
        .args(&common)
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: width and height as the window asked.
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1280, 1024));
    assert!(bytes.len() > 10_000, "an empty page renders smaller");
}

/// The `data-count` of every bar of the expiry chart.
fn bar_counts(dom: &str) -> Vec<(String, usize)> {
    dom.match_indices("data-bucket=\"")
        .map(|(i, m)| {
            let rest = &dom[i + m.len()..];
            let label = rest[..rest.find('"').unwrap()].to_string();
            let c = &rest[rest.find("data-count=\"").unwrap() + 12..];
            (label, c[..c.find('"').unwrap()].parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_reports_in_a_headless_browser() {
    let Some(browser) = chromium() else {
        eprintln!("note: no chromium on PATH; the HTML report browser test is skipped (.ci/run installs it)");
        return;
    };
    let lab = Lab::start(4, 61, |i| match i {
        1 => FaultPlan {
            error: vec![ErrorRule {
                pattern: Some("Services Activate".into()),
                times: Some(0),
                reason: "<img src=x onerror=alert(1)> activation refused".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        2 => FaultPlan {
            refuse_auth: true,
            ..Default::default()
        },
        _ => FaultPlan::default(),
    })
    .await;
    let pb = support::playbook(lab.path(), "external-identity", TEST_POLICY, FULL_FLOW);
    let page = lab.path().join("run.html");
    let (code, _, err) = lab
        .apply(
            &pb,
            &[
                "--concurrency",
                "2",
                "--report-html",
                page.to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(code, 2, "{err}");

    let profile = tempfile::tempdir().unwrap();
    let shot = lab.path().join("run.png");
    let dom = render(&browser, &page, &shot, profile.path());
    assert_png(&shot);
    assert!(dom.contains("<span id=\"exit-code\">2</span>"), "{dom}");
    let rows = dom.matches("<tr class=").count();
    assert_eq!(rows, 4, "{dom}");
    // Failures first, with the failing step and the device's reason as text.
    let first_row = &dom[dom.find("<tr class=").unwrap()..];
    let failed = &dom[dom.find("data-device=\"room-02\"").unwrap()..];
    let failed = &failed[..failed.find("</tr>").unwrap()];
    assert!(first_row.starts_with("<tr class=\"bad\""), "{dom}");
    assert!(failed.contains(">activate_certificate"), "{failed}");
    assert!(
        failed.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{failed}"
    );
    assert!(
        !dom.contains("<img"),
        "markup from a device became an element: {dom}"
    );
    assert!(dom.contains("data-device=\"room-03\""));
    assert!(dom.contains("auth-failed"), "{dom}");
    // The expiry picture: every device's certificate, 89 days left (the lab's 90-day ones).
    let bars = bar_counts(&dom);
    assert_eq!(bars.len(), 7, "{dom}");
    assert_eq!(bars.iter().map(|(_, c)| c).sum::<usize>(), 4);
    assert!(bars.contains(&("&lt; 90 days".to_string(), 4)), "{bars:?}");

    // `status --html`: the same browser, the fleet as read back.
    let status_page = lab.path().join("status.html");
    let inv = lab.inventory.to_str().unwrap().to_string();
    let out = lab
        .roomkey(&[
            "status",
            "-i",
            &inv,
            "--accept-new-host-keys",
            "--html",
            status_page.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shot = lab.path().join("status.png");
    let dom = render(&browser, &status_page, &shot, profile.path());
    assert_png(&shot);
    assert_eq!(dom.matches("<tr class=").count(), 4, "{dom}");
    assert!(dom.contains("<span id=\"attention\">2</span>"), "{dom}");
    let ok_row = &dom[dom.find("data-device=\"room-01\"").unwrap()..];
    let ok_row = &ok_row[..ok_row.find("</tr>").unwrap()];
    assert!(
        ok_row.contains("room-01.lab.example.com") && ok_row.contains(">89<"),
        "{ok_row}"
    );
    let bars = bar_counts(&dom);
    // Two rooms show their certificate (89 days); the refused login and the room whose
    // activation failed have none in use.
    assert!(bars.contains(&("&lt; 90 days".to_string(), 2)), "{bars:?}");
    assert!(bars.contains(&("unknown".to_string(), 2)), "{bars:?}");
}
