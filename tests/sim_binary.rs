//! `roomkey sim --inventory` as its own process, the way an administrator runs it: it serves
//! an inventory's rooms, the engine provisions them over SSH, and at `RUST_LOG=trace`
//! neither process logs a ClientSecret, the admin password or a private key.

mod support;

use roomkey::sim::FaultPlan;
use support::{playbook, Lab, FULL_FLOW, PASSWORD, TEST_POLICY};
use tokio::io::AsyncBufReadExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_binary_serves_an_inventory_and_logs_no_secret_at_trace() {
    let mut lab = Lab::start(3, 75, |_| FaultPlan::default()).await;
    // The rooms are served by the binary below instead of the in-process fleet.
    if let Some(fleet) = lab.fleet.take() {
        fleet.shutdown().await;
    }
    let mut sim_inventory = String::from(
        "defaults:\n  port: 0\n  auth: { password_env: ROOMKEY_SIM_PASSWORD }\ndevices:\n",
    );
    for (i, name) in lab.names.iter().enumerate() {
        sim_inventory.push_str(&format!("  {name}: {{ host: 127.75.1.{} }}\n", i + 1));
    }
    let sim_inventory_path = lab.path().join("sim-inventory.yaml");
    std::fs::write(&sim_inventory_path, sim_inventory).unwrap();
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(["sim", "--inventory"])
        .arg(&sim_inventory_path)
        .arg("--state-dir")
        .arg(lab.path().join("sim-binary-state"))
        .env("ROOMKEY_SIM_PASSWORD", PASSWORD)
        .env("RUST_LOG", "trace")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Drain the trace log as it comes: a full pipe would stall the simulator.
    let mut sim_stderr = sim.stderr.take().unwrap();
    let sim_log_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut sim_stderr, &mut buf)
            .await
            .unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    });

    // "name<TAB>address<TAB>host key fingerprint" per room, then "serving N ...".
    let mut lines = tokio::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut served = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("serving ") {
            break;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert!(fields[2].starts_with("SHA256:"), "{line}");
        let addr: std::net::SocketAddr = fields[1].parse().unwrap();
        served.push((fields[0].to_string(), addr));
    }
    assert_eq!(served.len(), 3);

    // Point the lab's inventory at the served rooms.
    let text = std::fs::read_to_string(&lab.inventory).unwrap();
    let (head, _) = text.split_once("devices:\n").unwrap();
    let mut inventory = format!("{head}devices:\n");
    for (name, addr) in &served {
        inventory.push_str(&format!(
            "  {name}: {{ host: {}, port: {} }}\n",
            addr.ip(),
            addr.port()
        ));
    }
    std::fs::write(&lab.inventory, inventory).unwrap();

    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let (code, stdout, apply_log) = lab.apply_env(&pb, &[], &[("RUST_LOG", "trace")]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{apply_log}");
    for (name, _) in &served {
        assert!(
            stdout.contains(&format!("{name}.lab.example.com")),
            "{name} verified:\n{stdout}"
        );
    }

    // Stop the simulator as `docker stop` would (SIGTERM) and read everything it logged.
    let pid = sim.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    sim.wait().await.unwrap();
    let sim_log = sim_log_task.await.unwrap();
    assert!(sim_log.contains("TRACE"), "trace logging was on");

    let mut forbidden: Vec<String> = lab.secrets.clone();
    forbidden.push(PASSWORD.to_string());
    forbidden.push("PRIVATE KEY".to_string());
    for name in &lab.names {
        let key = std::fs::read_to_string(lab.path().join(format!("certs/{name}.key"))).unwrap();
        forbidden.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_string),
        );
    }
    for (what, log) in [
        ("simulator", sim_log.as_str()),
        ("apply", apply_log.as_str()),
    ] {
        for f in &forbidden {
            assert!(!log.contains(f.as_str()), "the {what} log holds a secret");
        }
    }
}
