//! The cost of the device JWE, split where it matters for capacity planning: the scrypt
//! derivation (N=32768, r=8, p=1 — the only configuration a device accepts, and the cost
//! every JWE pays on both ends), and everything else a JWE build or open does with an
//! already derived key (header JSON, base64url, AES-GCM) for the payloads roomkey sends.
//!
//! Run: `cargo bench --bench crypto` (criterion prints time per iteration).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use roomkey::jwe::{self, Action, Enc};

const SALT: [u8; 16] = [7u8; 16];
const IV: [u8; 12] = [9u8; 12];

/// A certificate + P-256 key PEM is about 1.2 KB; a fingerprint is 40 bytes.
fn payloads() -> [(&'static str, Vec<u8>); 2] {
    [
        ("fingerprint-40B", vec![b'a'; 40]),
        ("cert+key-1200B", vec![b'M'; 1200]),
    ]
}

fn scrypt_derivation(c: &mut Criterion) {
    let mut group = c.benchmark_group("scrypt");
    // ~0.1 s per iteration: keep the sample small so the run stays short on 2 cores.
    group.sample_size(10);
    for enc in [Enc::A128Gcm, Enc::A256Gcm] {
        group.bench_function(BenchmarkId::new("derive_key", enc.as_str()), |b| {
            b.iter(|| jwe::derive_key(black_box(b"ossifrage"), black_box(&SALT), enc))
        });
    }
    group.finish();
}

fn jwe_without_scrypt(c: &mut Criterion) {
    let key = match jwe::derive_key(b"ossifrage", &SALT, Enc::A256Gcm) {
        Ok(k) => k,
        Err(e) => panic!("scrypt failed in the benchmark set-up: {e}"),
    };
    let mut group = c.benchmark_group("jwe-excluding-scrypt");
    for (label, plaintext) in payloads() {
        group.bench_function(BenchmarkId::new("build", label), |b| {
            b.iter(|| {
                jwe::seal_with_key(
                    Action::Add,
                    Enc::A256Gcm,
                    black_box(&key),
                    &SALT,
                    &IV,
                    black_box(&plaintext),
                )
            })
        });
        let compact =
            match jwe::seal_with_key(Action::Add, Enc::A256Gcm, &key, &SALT, &IV, &plaintext) {
                Ok(c) => c,
                Err(e) => panic!("building the benchmark JWE failed: {e}"),
            };
        group.bench_function(BenchmarkId::new("parse+open", label), |b| {
            b.iter(|| {
                let parsed = jwe::parse(black_box(&compact));
                parsed.and_then(|p| jwe::open_with_key(&p, &key))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scrypt_derivation, jwe_without_scrypt);
criterion_main!(benches);
