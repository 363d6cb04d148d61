//! `roomkey bench`: measures a whole fleet run the way an administrator would run it, and
//! sets it against the costs nobody can avoid — scrypt on the controller's cores, and the
//! devices' own time.
//!
//! It starts `roomkey sim` as its own process (N devices on consecutive loopback addresses,
//! a fixed reply latency, optionally a per-derivation device delay), issues every device a
//! certificate from a throw-away test CA, seeds a vault, then runs the real `roomkey apply`
//! of the external-identity flow as a second child process. Because the controller is a
//! child of its own, the kernel's accounting of it (CPU time and peak RSS from
//! `wait4`/`getrusage(RUSAGE_CHILDREN)`) covers exactly the controller: start-up, vault
//! unlock, preflight, SSH, journal, reporting.
//!
//! The floors:
//! - **CPU floor**: scrypt CPU over the cores. Each process accounts the thread CPU of its
//!   own derivations (`KdfPool::usage`; the controller in its JSON report, the simulator as
//!   it stops). The simulator runs on the same cores, so the floor the wall time is held to
//!   is the *combined* one (controller's and simulator's scrypt CPU / cores); the
//!   controller-only floor (its scrypt CPU / cores) is printed beside it. The simulator is
//!   started with its derived-key cache on (`roomkey sim --cache-jwe-keys`), so a
//!   controller session costs it one derivation, as it costs the controller.
//! - **Device floor**: the devices' simulated time — reply latency (`--latency-ms`, the
//!   network RTT) and per-derivation device time (`--device-scrypt-ms`) summed over the
//!   fleet — over the session concurrency: sessions cannot overlap more than that.
//!
//! Wall time is compared with the larger floor. Under load a derivation costs more CPU than
//! alone (32 MiB working sets share two cores' caches), so the bench prints both. Linux
//! only (it reads `/proc` for the simulator's CPU and memory).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use roomkey::cert::TestCa;
use roomkey::kdf::KdfUsage;
use roomkey::secret::Secret;

/// Arguments of `roomkey bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated devices in the fleet.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Simulated reply latency per command, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    /// Concurrent device sessions of the controller (playbook `policy.concurrency`).
    #[arg(long, default_value_t = 48)]
    pub concurrency: usize,
    /// First loopback address of the simulated fleet (devices take consecutive addresses).
    #[arg(long, default_value = "127.77.0.1")]
    pub base: Ipv4Addr,
    /// scrypt derivations timed alone, for comparison with their cost inside the run.
    #[arg(long, default_value_t = 7)]
    pub scrypt_samples: usize,
    /// Keep the bench's files (inventory, certificates, vault, journal, logs) in DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Device time per scrypt derivation on top of this machine's, in milliseconds (the
    /// device-time profile; a Room Kit's CPU is much slower, e.g. 800). 0: none.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub device_scrypt_ms: u64,
    /// Print the measurements as one JSON object on stdout (the summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Run the controller under a profiler: a command prefix, split at spaces, e.g.
    /// `--profile-with "heaptrack -o apply"` or `--profile-with "perf record -g --"`. Its
    /// files land in the bench dir; the CPU and memory figures are then the profiler's.
    #[arg(long, value_name = "COMMAND")]
    pub profile_with: Option<String>,
}

/// The simulator's account of its devices' simulated time (its "device time:" line).
#[derive(Debug, Clone, Copy, Default)]
struct DeviceTime {
    latency_ms: u64,
    derivation_delay_ms: u64,
    derivations: u64,
    reused: u64,
}

/// CPU time and peak resident memory of a process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// User + system.
    cpu: Duration,
    /// The system (kernel) part of `cpu`: syscalls, fsyncs, socket I/O.
    system: Duration,
    peak_rss_kib: u64,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let (dir, _tmp) = super::work_dir(args.dir.as_deref(), "roomkey-bench-")?;
    let exe = std::env::current_exe().context("locating the roomkey binary")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let password = roomkey::vault::generate_secret();
    let passphrase = roomkey::vault::generate_secret();

    eprintln!(
        "bench: measuring scrypt alone ({} samples)",
        args.scrypt_samples
    );
    let scrypt_alone = scrypt_cost(args.scrypt_samples.max(1))?;

    eprintln!(
        "bench: issuing {} certificates, seeding a vault",
        args.devices
    );
    let names: Vec<String> = (0..args.devices)
        .map(|i| format!("room-{:03}", i + 1))
        .collect();
    write_certificates(&dir, &names)?;
    write_vault(&dir, &names, &passphrase)?;

    eprintln!("bench: starting the simulator ({} devices)", args.devices);
    let mut sim = Simulator::start(&exe, &dir, &args, &password)?;
    let addrs = sim.wait_ready(&names)?;
    write_inventory(&dir, &names, &addrs)?;
    write_playbook(&dir, args.concurrency)?;

    eprintln!("bench: running roomkey apply");
    let sim_before = sim.usage()?;
    let started = Instant::now();
    let mut apply = match args.profile_with.as_deref().map(str::split_whitespace) {
        Some(mut prefix) => {
            let program = prefix.next().context("--profile-with is empty")?;
            let mut command = Command::new(program);
            command.args(prefix).arg(&exe);
            command
        }
        None => Command::new(&exe),
    };
    let mut apply = apply
        .current_dir(&dir)
        .args(["apply", "-i", "inventory.yaml", "external-identity.yaml"])
        .args(["--output", "plain", "--report", "report.json"])
        .env("ROOMKEY_SIM_PASSWORD", password.expose())
        .env("ROOMKEY_VAULT_PASSPHRASE", passphrase.expose())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file(&dir, "apply.out")?)
        .stderr(log_file(&dir, "apply.err")?)
        .spawn()
        .context("starting roomkey apply")?;
    let (code, controller) = wait_with_usage(&mut apply)?;
    let wall = started.elapsed();
    let sim_after = sim.usage()?;
    let (sim_kdf, device_time) = sim.finish()?;
    if code != 0 {
        bail!(
            "roomkey apply exited {code}; see {} and {}",
            dir.join("apply.out").display(),
            dir.join("apply.err").display()
        );
    }
    let controller_kdf = report_kdf(&dir.join("report.json"))?;

    let n = args.devices as u64;
    let scrypt_cpu = |u: &KdfUsage| Duration::from_millis(u.cpu_ms);
    // CPU floors: the scrypt CPU spent, spread over every core — the controller's alone,
    // and with the simulator's (it runs on the same cores: the one the wall is held to).
    let controller_floor = scrypt_cpu(&controller_kdf).div_f64(cores as f64);
    let cpu_floor = (scrypt_cpu(&controller_kdf) + scrypt_cpu(&sim_kdf)).div_f64(cores as f64);
    // Device floor: the devices' simulated time over the sessions that can overlap.
    let sessions = args.concurrency.clamp(1, args.devices);
    let device_total =
        Duration::from_millis(device_time.latency_ms + device_time.derivation_delay_ms);
    let device_floor = device_total.div_f64(sessions as f64);
    let (floor, floor_name) = if device_floor > cpu_floor {
        (device_floor, "device")
    } else {
        (cpu_floor, "cpu (controller + simulator)")
    };
    let wall_ratio = wall.as_secs_f64() / floor.as_secs_f64().max(f64::EPSILON);
    let cpu_per_device = controller.cpu.div_f64(n as f64);
    let scrypt_per_device = scrypt_cpu(&controller_kdf).div_f64(n as f64);
    let cpu_ratio =
        cpu_per_device.as_secs_f64() / scrypt_per_device.as_secs_f64().max(f64::EPSILON);
    let per_derivation = |u: &KdfUsage| u.cpu_ms as f64 / u.derivations.max(1) as f64;
    // The issue's measure: the controller's CPU against ONE derivation per device, at the
    // cost a derivation had in this run.
    let one_derivation_ratio =
        ms(cpu_per_device) / per_derivation(&controller_kdf).max(f64::EPSILON);
    let kdf_parallel = cores as u64;
    let mem_limit_mib = 64 + 32 * kdf_parallel;
    let peak_mib = controller.peak_rss_kib as f64 / 1024.0;
    let sim_cpu = sim_after.cpu.saturating_sub(sim_before.cpu);
    let sim_peak_mib = sim_after.peak_rss_kib as f64 / 1024.0;

    let verdict = |ok: bool| if ok { "ok" } else { "EXCEEDED" };
    let wall_ok = wall_ratio <= 1.1;
    let cpu_ok = one_derivation_ratio <= 1.15;
    let mem_ok = peak_mib <= mem_limit_mib as f64;
    let lines = [
        "roomkey bench: external-identity flow, apply and simulator in separate processes".to_string(),
        format!("  devices                      {n}"),
        format!(
            "  device-time profile          reply latency {} ms, device scrypt {} ms per derivation",
            args.latency_ms, args.device_scrypt_ms
        ),
        format!(
            "  concurrency                  {} sessions, {kdf_parallel} scrypt at a time, {cores} cores",
            args.concurrency
        ),
        format!("  wall time                    {:.2} s", wall.as_secs_f64()),
        format!(
            "  scrypt derivations           controller {} ({:.1} ms CPU each), simulator {} ({:.1} ms each, {} keys reused); alone {:.1} ms",
            controller_kdf.derivations,
            per_derivation(&controller_kdf),
            sim_kdf.derivations,
            per_derivation(&sim_kdf),
            device_time.reused,
            ms(scrypt_alone),
        ),
        format!(
            "  controller floor             {:.2} s  (its scrypt CPU / {cores} cores)",
            controller_floor.as_secs_f64()
        ),
        format!(
            "  cpu floor                    {:.2} s  (controller's + simulator's scrypt CPU / {cores} cores: they share the cores)",
            cpu_floor.as_secs_f64()
        ),
        format!(
            "  device floor                 {:.2} s  (device time {:.1} s: latency {:.1} s + derivations {:.1} s, over {sessions} sessions)",
            device_floor.as_secs_f64(),
            device_total.as_secs_f64(),
            device_time.latency_ms as f64 / 1000.0,
            device_time.derivation_delay_ms as f64 / 1000.0,
        ),
        format!(
            "  wall / larger floor ({floor_name}) {wall_ratio:.3}  (limit 1.1: {})",
            verdict(wall_ok)
        ),
        format!(
            "  controller CPU               {:.2} s total ({:.2} s system), {:.1} ms per device",
            controller.cpu.as_secs_f64(),
            controller.system.as_secs_f64(),
            ms(cpu_per_device)
        ),
        format!(
            "  controller CPU / 1 scrypt    {one_derivation_ratio:.3} per device  (limit 1.15: {}); / its own scrypt {cpu_ratio:.3} ({:.1} ms per device)",
            verdict(cpu_ok),
            ms(scrypt_per_device),
        ),
        format!(
            "  controller peak RSS          {peak_mib:.1} MiB  (limit 64 + 32 x {kdf_parallel} = {mem_limit_mib} MiB: {})",
            verdict(mem_ok)
        ),
        format!(
            "  simulator CPU                {:.2} s (on the same cores), peak RSS {sim_peak_mib:.1} MiB",
            sim_cpu.as_secs_f64(),
        ),
    ];
    if args.json {
        for l in &lines {
            eprintln!("{l}");
        }
        let doc = serde_json::json!({
            "devices": n,
            "concurrency": args.concurrency,
            "sessions": sessions,
            "cores": cores,
            "latency_ms": args.latency_ms,
            "device_scrypt_ms": args.device_scrypt_ms,
            "wall_s": wall.as_secs_f64(),
            "scrypt_alone_ms": ms(scrypt_alone),
            "controller": {
                "cpu_s": controller.cpu.as_secs_f64(),
                "system_cpu_s": controller.system.as_secs_f64(),
                "cpu_per_device_ms": ms(cpu_per_device),
                "scrypt_derivations": controller_kdf.derivations,
                "scrypt_cpu_s": scrypt_cpu(&controller_kdf).as_secs_f64(),
                "scrypt_per_derivation_ms": per_derivation(&controller_kdf),
                "cpu_per_device_over_one_derivation": one_derivation_ratio,
                "cpu_over_own_scrypt": cpu_ratio,
                "peak_rss_mib": peak_mib,
                "rss_limit_mib": mem_limit_mib,
            },
            "simulator": {
                "cpu_s": sim_cpu.as_secs_f64(),
                "system_cpu_s": sim_after.system.saturating_sub(sim_before.system).as_secs_f64(),
                "peak_rss_mib": sim_peak_mib,
                "scrypt_derivations": sim_kdf.derivations,
                "scrypt_cpu_s": scrypt_cpu(&sim_kdf).as_secs_f64(),
                "device_derivations": device_time.derivations,
                "keys_reused": device_time.reused,
                "device_latency_s": device_time.latency_ms as f64 / 1000.0,
                "device_derivation_delay_s": device_time.derivation_delay_ms as f64 / 1000.0,
            },
            "floors": {
                "controller_s": controller_floor.as_secs_f64(),
                "cpu_s": cpu_floor.as_secs_f64(),
                "device_s": device_floor.as_secs_f64(),
                "larger": if device_floor > cpu_floor { "device" } else { "cpu" },
            },
            "wall_over_larger_floor": wall_ratio,
            "targets": { "wall": wall_ok, "controller_cpu": cpu_ok, "memory": mem_ok },
        });
        println!("{doc}");
    } else {
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(if wall_ok && cpu_ok && mem_ok { 0 } else { 2 })
}

/// The controller's account of its scrypt work, from the run's JSON report.
fn report_kdf(path: &Path) -> anyhow::Result<KdfUsage> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let field = |name: &str| doc["kdf"][name].as_u64();
    match (field("derivations"), field("cpu_ms")) {
        (Some(derivations), Some(cpu_ms)) => Ok(KdfUsage {
            derivations,
            cpu_ms,
        }),
        _ => bail!("{} has no scrypt account (kdf)", path.display()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The CPU time of one scrypt derivation (the device JWE's parameters): the fastest of
/// `samples`, in thread CPU time, so neither a busy machine nor a noisy neighbour inflates
/// the floor — the ratios are measured against scrypt's intrinsic cost.
fn scrypt_cost(samples: usize) -> anyhow::Result<Duration> {
    // Warm-up: the first derivations pay for faulting in 32 MiB of fresh pages, which the
    // allocator reuses afterwards, as it does during a run.
    for _ in 0..2 {
        roomkey::jwe::derive_key(b"bench warm-up", &[0u8; 16], roomkey::jwe::Enc::A256Gcm)?;
    }
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let salt = [u8::try_from(i % 256).unwrap_or(0); 16];
        let before = thread_cpu()?;
        roomkey::jwe::derive_key(b"bench secret", &salt, roomkey::jwe::Enc::A256Gcm)?;
        times.push(thread_cpu()?.saturating_sub(before));
    }
    times.into_iter().min().context("no scrypt sample")
}

/// CPU time consumed so far by the calling thread.
fn thread_cpu() -> anyhow::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        bail!(
            "reading the thread CPU clock: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(Duration::from_secs(u64::try_from(ts.tv_sec).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(ts.tv_nsec).unwrap_or(0)))
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

fn write_certificates(dir: &Path, names: &[String]) -> anyhow::Result<()> {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let ca = TestCa::create("roomkey bench test CA (not for production)")?;
    for name in names {
        super::issue_test_certificate(
            &ca,
            &format!("{name}.bench.example.com"),
            &certs.join(format!("{name}.pem")),
            &certs.join(format!("{name}.key")),
        )?;
    }
    Ok(())
}

fn write_vault(dir: &Path, names: &[String], passphrase: &Secret) -> anyhow::Result<()> {
    let path = dir.join("vault");
    let mut vault = roomkey::vault::Vault::create(&path, passphrase)
        .with_context(|| format!("creating {}", path.display()))?;
    for name in names {
        vault.set_current(
            name,
            roomkey::vault::generate_secret(),
            false,
            Some("bench"),
        )?;
    }
    vault.save()?;
    Ok(())
}

fn write_inventory(dir: &Path, names: &[String], addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let mut text = String::from(
        "# Written by `roomkey bench`.\nvault: vault\ndefaults:\n  username: admin\n  \
         auth: { password_env: ROOMKEY_SIM_PASSWORD }\n  certificate: certs/{name}.pem\n  \
         key: certs/{name}.key\n  identity: \"{name}.bench.example.com\"\ndevices:\n",
    );
    for (name, addr) in names.iter().zip(addrs) {
        text.push_str(&format!(
            "  {name}: {{ host: {}, port: {} }}\n",
            addr.ip(),
            addr.port()
        ));
    }
    std::fs::write(dir.join("inventory.yaml"), text)?;
    Ok(())
}

fn write_playbook(dir: &Path, concurrency: usize) -> anyhow::Result<()> {
    let text = format!(
        "name: external-identity\npolicy:\n  concurrency: {concurrency}\n  \
         connect_timeout: 30s\n  auth_timeout: 30s\n  command_timeout: 60s\n  \
         retries: 2\n  retry_backoff: 1s\n  host_key_policy: accept-new\nsteps:\n  \
         - populate_secret: {{ initial: true }}\n  - add_certificate: {{}}\n  \
         - show_certificates: {{}}\n  - activate_certificate: {{ purpose: WebexIdentity }}\n  \
         - set_configuration: {{ path: Conference EndToEndEncryption Mode, value: \"On\" }}\n  \
         - verify_external_identity: {{}}\n"
    );
    std::fs::write(dir.join("external-identity.yaml"), text)?;
    Ok(())
}

/// `roomkey sim` in its own process; killed when dropped.
struct Simulator {
    child: Child,
    stdout: Option<std::io::Lines<BufReader<std::process::ChildStdout>>>,
}

impl Simulator {
    fn start(exe: &Path, dir: &Path, args: &Args, password: &Secret) -> anyhow::Result<Self> {
        let faults = dir.join("sim-faults.yaml");
        std::fs::write(&faults, format!("latency_ms: {}\n", args.latency_ms))?;
        let child = Command::new(exe)
            .args(["sim", "--count", &args.devices.to_string()])
            .args(["--base", &args.base.to_string(), "--port", "0"])
            .arg("--faults")
            .arg(&faults)
            // The bench's CPU accounting: one derivation per controller session on the
            // simulator's side too (see `sim::device_cpu`).
            .arg("--cache-jwe-keys")
            .args(["--device-scrypt-ms", &args.device_scrypt_ms.to_string()])
            .env("ROOMKEY_SIM_PASSWORD", password.expose())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(dir, "sim.err")?)
            .spawn()
            .context("starting roomkey sim")?;
        Ok(Simulator {
            child,
            stdout: None,
        })
    }

    /// Reads the simulator's "name<TAB>address<TAB>host key" lines until it says it serves.
    fn wait_ready(&mut self, names: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
        let stdout = self
            .child
            .stdout
            .take()
            .context("the simulator's output is not piped")?;
        let lines = self.stdout.insert(BufReader::new(stdout).lines());
        let mut by_name = std::collections::HashMap::new();
        for line in lines.by_ref() {
            let line = line.context("reading the simulator's output")?;
            if line.starts_with("serving ") {
                break;
            }
            let mut fields = line.split('\t');
            if let (Some(name), Some(addr)) = (fields.next(), fields.next()) {
                if let Ok(addr) = addr.parse::<SocketAddr>() {
                    by_name.insert(name.to_string(), addr);
                }
            }
        }
        names
            .iter()
            .map(|n| {
                by_name.get(n).copied().with_context(|| {
                    format!("the simulator did not report {n} (see sim.err in the bench dir)")
                })
            })
            .collect()
    }

    fn usage(&self) -> anyhow::Result<Usage> {
        proc_usage(self.child.id())
    }

    /// Stops the simulator as Ctrl-C would and reads its account of the scrypt work its
    /// devices did ("scrypt: N derivations, M ms CPU") and of their simulated time
    /// ("device time: L ms latency, D ms derivation delay, N derivations, R keys reused").
    fn finish(&mut self) -> anyhow::Result<(KdfUsage, DeviceTime)> {
        let pid = libc::pid_t::try_from(self.child.id()).context("simulator pid out of range")?;
        // SAFETY: signalling our own child process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "stopping the simulator: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut usage = None;
        let mut device = None;
        for line in self.stdout.as_mut().into_iter().flatten() {
            let line = line.context("reading the simulator's output")?;
            let numbers = |rest: &str| -> Vec<u64> {
                rest.split_whitespace()
                    .filter_map(|w| w.trim_end_matches(',').parse().ok())
                    .collect()
            };
            if let Some(rest) = line.strip_prefix("scrypt: ") {
                if let [derivations, cpu_ms, ..] = numbers(rest)[..] {
                    usage = Some(KdfUsage {
                        derivations,
                        cpu_ms,
                    });
                }
            } else if let Some(rest) = line.strip_prefix("device time: ") {
                if let [latency_ms, derivation_delay_ms, derivations, reused, ..] =
                    numbers(rest)[..]
                {
                    device = Some(DeviceTime {
                        latency_ms,
                        derivation_delay_ms,
                        derivations,
                        reused,
                    });
                }
            }
        }
        let _ = self.child.wait();
        let usage = usage.context("the simulator did not report its scrypt work (see sim.err)")?;
        let device =
            device.context("the simulator did not report its device time (see sim.err)")?;
        Ok((usage, device))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU (user + system) and peak RSS of a running process, from `/proc/PID/{stat,status}`.
fn proc_usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let total = ticks(11) + ticks(12); // utime, stime (fields 14, 15; 3 is the first here)
    let cpu = Duration::from_secs_f64(total as f64 / hz as f64);
    let system = Duration::from_secs_f64(ticks(12) as f64 / hz as f64);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Usage {
        cpu,
        system,
        peak_rss_kib,
    })
}

/// Waits for `child` and returns its exit code with the kernel's account of its CPU time
/// and peak RSS (`wait4`), which covers the whole process, not a sample.
fn wait_with_usage(child: &mut Child) -> anyhow::Result<(i32, Usage)> {
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; both out-pointers are valid for the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!(
            "waiting for roomkey apply: {}",
            std::io::Error::last_os_error()
        );
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok((
        code,
        Usage {
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            system: tv(usage.ru_stime),
            peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        },
    ))
}
