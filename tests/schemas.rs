//! The published JSON Schemas (`docs/schemas/`) are the ones generated from the types that
//! serialise each output, and real outputs of a run against the simulator validate against
//! them — checked by an independent validator (Python's `jsonschema`, Draft 2020-12). When
//! a type changes, regenerate with `ROOMKEY_UPDATE_SCHEMAS=1 cargo test --test schemas`.

mod support;

use std::path::{Path, PathBuf};

use roomkey::sim::faults::ErrorRule;
use roomkey::sim::FaultPlan;
use support::{Lab, FULL_FLOW, TEST_POLICY};

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas")
}

#[test]
fn published_schemas_are_generated_from_the_types() {
    let update = std::env::var_os("ROOMKEY_UPDATE_SCHEMAS").is_some();
    for (name, schema) in roomkey::report::schemas() {
        let path = schema_dir().join(name);
        let text = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
        if update {
            std::fs::create_dir_all(schema_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == text,
            "{} is not the schema generated from the types; regenerate with \
             ROOMKEY_UPDATE_SCHEMAS=1 cargo test --test schemas",
            path.display()
        );
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
    }
}

/// Validates every JSON document in `docs` (one per line when `lines`) against the schema
/// with Python's jsonschema; false when that validator is not installed.
fn validate(schema: &str, docs: &Path, lines: bool) -> bool {
    const SCRIPT: &str = r#"
import json, sys
try:
    import jsonschema
except ImportError:
    sys.exit(77)
schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft202012Validator(schema)
jsonschema.Draft202012Validator.check_schema(schema)
text = open(sys.argv[2]).read()
docs = [json.loads(l) for l in text.splitlines() if l.strip()] if sys.argv[3] == "lines" else [json.loads(text)]
assert docs, "no document"
for i, doc in enumerate(docs):
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        print(f"document {i}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
        sys.exit(1)
print(len(docs))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(schema_dir().join(schema))
        .arg(docs)
        .arg(if lines { "lines" } else { "one" })
        .output();
    let Ok(out) = out else {
        eprintln!("note: no python3; schema validation skipped");
        return false;
    };
    if out.status.code() == Some(77) {
        eprintln!("note: python3 has no jsonschema module; schema validation skipped (.ci/run installs python3-jsonschema)");
        return false;
    }
    assert!(
        out.status.success(),
        "{} does not validate against {schema}:\n{}{}",
        docs.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_outputs_validate_against_the_published_schemas() {
    let lab = Lab::start(3, 62, |i| match i {
        1 => FaultPlan {
            error: vec![ErrorRule {
                pattern: Some("Services Activate".into()),
                times: Some(0),
                reason: "Certificate activation failed".into(),
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
    let dir = lab.path();

    // plan --json
    let (code, plan) = lab.plan_with(&pb, &["--json"]).await;
    assert_eq!(code, 0, "{plan}");
    let doc: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(doc["version"], roomkey::report::PLAN_VERSION);
    assert_eq!(doc["devices"].as_array().unwrap().len(), 3);
    std::fs::write(dir.join("plan.json"), &plan).unwrap();

    // apply --output json (the event stream on stdout) and --report
    let report = dir.join("run.json");
    let out = lab
        .roomkey(&[
            "apply",
            "-i",
            lab.inventory.to_str().unwrap(),
            pb.to_str().unwrap(),
            "--output",
            "json",
            "--report",
            report.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 10, "{events}");
    for l in &lines {
        assert_eq!(l["version"], roomkey::report::EVENTS_VERSION, "{l}");
        let ts = l["ts"].as_str().unwrap();
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{ts}: {e}"));
    }
    assert_eq!(lines[0]["event"], "run-started");
    assert_eq!(lines.last().unwrap()["event"], "run-finished");
    std::fs::write(dir.join("events.jsonl"), &events).unwrap();

    // status --json
    let inv = lab.inventory.to_str().unwrap().to_string();
    let out = lab
        .roomkey(&["status", "-i", &inv, "--json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    std::fs::write(dir.join("status.json"), &out.stdout).unwrap();

    let checked = [
        validate("plan.schema.json", &dir.join("plan.json"), false),
        validate("events.schema.json", &dir.join("events.jsonl"), true),
        validate("report.schema.json", &report, false),
        validate("status.schema.json", &dir.join("status.json"), false),
    ];
    assert!(
        checked.iter().all(|c| *c) || checked.iter().all(|c| !*c),
        "{checked:?}"
    );
}
