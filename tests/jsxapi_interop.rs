//! Interop with Cisco's own xAPI client: jsxapi (npm `jsxapi`, `ssh://` transport) connects
//! to a simulated device, becomes ready, and runs a status read, an xCommand, a failing
//! xCommand, a feedback registration and a configuration set (tests/jsxapi/interop.js).
//! jsxapi opens its shell with no pty and waits for a line exactly `OK`, so this is the
//! check that the simulator's line ends follow the pty (catalogue `framing.line-ends`) and
//! that its JSON mode is what jsxapi parses (`reply.json`, `reply.json-error`,
//! `feedback.commands`).
//!
//! Needs Node.js and `npm ci --prefix tests/jsxapi` (`.ci/run` does both). Without them the
//! test is skipped with a note, unless `ROOMKEY_REQUIRE_JSXAPI=1` (set by CI) makes that a
//! failure.

mod support_raw;

use std::path::PathBuf;
use std::time::Duration;

use roomkey::sim::FaultPlan;
use support_raw::*;

fn jsxapi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/jsxapi")
}

/// Node.js with jsxapi installed, or `None` (with a note) when the check must be skipped.
fn node_with_jsxapi() -> Option<PathBuf> {
    let required = std::env::var("ROOMKEY_REQUIRE_JSXAPI").is_ok_and(|v| v == "1");
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let installed = jsxapi_dir()
        .join("node_modules/jsxapi/package.json")
        .is_file();
    if node_ok && installed {
        return Some(PathBuf::from("node"));
    }
    let why = if node_ok {
        "jsxapi is not installed (npm ci --prefix tests/jsxapi)"
    } else {
        "Node.js is not installed"
    };
    assert!(!required, "ROOMKEY_REQUIRE_JSXAPI=1 but {why}");
    eprintln!("note: skipping the jsxapi interop check: {why}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsxapi_connects_reads_commands_sets_and_registers_feedback() {
    let Some(node) = node_with_jsxapi() else {
        return;
    };
    let fleet = one_device(FaultPlan::default(), None).await;
    let addr = fleet.devices()[0].addr;
    let run = tokio::process::Command::new(node)
        .arg(jsxapi_dir().join("interop.js"))
        .current_dir(jsxapi_dir())
        .env("ROOMKEY_JSXAPI_HOST", addr.ip().to_string())
        .env("ROOMKEY_JSXAPI_PORT", addr.port().to_string())
        .env("ROOMKEY_JSXAPI_USER", USER)
        .env("ROOMKEY_JSXAPI_PASSWORD", PASSWORD)
        // jsxapi would offer agent keys first; the device takes keyboard-interactive.
        .env_remove("SSH_AUTH_SOCK")
        .kill_on_drop(true)
        .output();
    // A bound, not a synchronisation: a client that never becomes ready fails the test.
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("jsxapi finished within the bound (it never became ready?)")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "jsxapi failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(v["productId"], "Cisco Room Kit", "{v}");
    assert!(
        v["uptime"]
            .as_str()
            .is_some_and(|u| u.parse::<u64>().is_ok()),
        "{v}"
    );
    assert_eq!(v["showStatus"], "OK", "{v}");
    assert_eq!(v["unknownCommand"], "Unknown command", "{v}");
    assert_eq!(v["registered"], true, "{v}");
    assert_eq!(v["feedback"], "Off", "{v}");
    assert_eq!(v["modeAfterSet"], "Off", "{v}");
    assert_eq!(v["badPath"], "No match on address expression.", "{v}");
    // The device saw jsxapi's commands, each tagged with its resultId.
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert!(snap.e2ee_mode_on, "the last set turned E2EE back on");
    assert!(snap.count("Services Show") >= 1);
    fleet.shutdown().await;
}

/// No pty: every line ends `\n` (what jsxapi waits for); with a pty: `\r\n`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_ends_follow_the_pty() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let addr = fleet.devices()[0].addr;
    let mut plain = RawClient::connect_no_pty(addr, USER, PASSWORD)
        .await
        .unwrap();
    let banner = plain.read_until("OK\n\n").await;
    assert!(!banner.contains('\r'), "{banner:?}");
    assert!(
        banner.contains("\n*r Login successful\n\nOK\n"),
        "{banner:?}"
    );
    assert_eq!(plain.cmd("echo off", "OK\n").await, "echo off\nOK\n");
    let reply = plain.cmd("xStatus SystemUnit ProductId", "\nOK\n").await;
    assert_eq!(
        reply,
        "*s SystemUnit ProductId: \"Cisco Room Kit\"\n** end\n\nOK\n"
    );
    let mut tty = RawClient::connect(addr, USER, PASSWORD).await.unwrap();
    assert!(tty
        .read_banner()
        .await
        .ends_with("\r\n*r Login successful\r\n\r\nOK\r\n\r\n"));
    assert_eq!(tty.cmd("echo off", "OK\r\n").await, "echo off\r\nOK\r\n");
    fleet.shutdown().await;
}

/// JSON output mode: pretty-printed, framed by lines `{` and `}`, the resultId appended
/// before the closing brace; a configuration set answers the resultId alone; feedback
/// registration answers the resultId (catalogue reply.json, feedback.commands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_replies_as_jsxapi_parses_them() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let addr = fleet.devices()[0].addr;
    let mut c = RawClient::connect_no_pty(addr, USER, PASSWORD)
        .await
        .unwrap();
    c.read_until("OK\n\n").await;
    c.cmd("echo off", "OK\n").await;
    c.send("xpreferences outputmode json\n").await;
    let r = c
        .cmd(
            "xStatus SystemUnit ProductId | resultId=\"request-1\"",
            "\n}\n",
        )
        .await;
    assert_eq!(
        r,
        "{\n  \"Status\": {\n    \"SystemUnit\": {\n      \"ProductId\": {\n        \"Value\": \"Cisco Room Kit\"\n      }\n    }\n  }\n,\"ResultId\": \"request-1\"\n}\n"
    );
    let r = c
        .cmd(
            "xConfiguration Conference EndToEndEncryption Mode: Off | resultId=\"request-2\"",
            "\n}\n",
        )
        .await;
    assert_eq!(r, "{\n\"ResultId\": \"request-2\"\n}\n");
    let r = c
        .cmd(
            "xfeedback register /Status/Audio/Volume | resultId=\"request-3\"",
            "\n}\n",
        )
        .await;
    assert_eq!(r, "{\n\"ResultId\": \"request-3\"\n}\n");
    let r = c
        .cmd("xCommand Dila | resultId=\"request-4\"", "\n}\n")
        .await;
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(
        v["CommandResponse"]["Result"]["Reason"]["Value"],
        "Unknown command"
    );
    assert_eq!(v["CommandResponse"]["Result"]["XPath"]["Value"], "/Dila");
    fleet.shutdown().await;
}
