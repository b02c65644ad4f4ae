//! What the benchmarks measure from Rust, without PHP: the heartbeat load a server sustains and
//! the cost of a local pid check. Driven by scripts/bench; prints one JSON object; never fails
//! on time.
//!
//!   raw heartbeats URL PREFIX PROCESSES SECONDS   heartbeat UPDATEs/s the server sustains
//!   raw pidcheck COUNT                      cost of one local pid check (/proc)

use matomo_archive_claim::liveness::LocalView;
use std::time::{Duration, Instant};

use matomo_archive_claim::config::DbConfig;
use matomo_archive_claim::connection;
use matomo_archive_claim::identity::Identity;
use matomo_archive_claim::registry;

fn median_and_p90(mut micros: Vec<f64>) -> (f64, f64) {
    micros.sort_by(|a, b| a.total_cmp(b));
    if micros.is_empty() {
        return (0.0, 0.0);
    }
    (micros[micros.len() / 2], micros[micros.len() * 9 / 10])
}

fn config(url: &str) -> DbConfig {
    DbConfig::from_url(url).unwrap_or_else(|e| panic!("bad url: {e}"))
}

fn heartbeats(args: &[String]) {
    let cfg = config(&args[0]);
    let processes: usize = args[2].parse().expect("processes");
    let seconds: u64 = args[3].parse().expect("seconds");
    let mut conn = connection::connect(&cfg).expect("connect");
    let me = Identity::current();
    let ids: Vec<u64> = (0..processes)
        .map(|_| registry::register(&mut conn, &cfg, &me, false, None, 60.0).expect("register"))
        .collect();
    // As many connections as the machine has cores, each beating its share as fast as it can.
    let workers = 4;
    let stop = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let cfg = cfg.clone();
            let mine: Vec<u64> = ids.iter().copied().skip(w).step_by(workers).collect();
            std::thread::spawn(move || {
                let mut conn = connection::connect(&cfg).expect("connect");
                let mut beats = 0u64;
                'outer: loop {
                    for id in &mine {
                        if Instant::now() >= stop {
                            break 'outer;
                        }
                        registry::heartbeat(
                            &mut conn,
                            &cfg,
                            *id,
                            Some(&registry::ThreadCounters::default()),
                        )
                        .expect("beat");
                        beats += 1;
                    }
                }
                beats
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    for id in ids {
        let _ = registry::unregister(&mut conn, &cfg, id);
    }
    println!(
        "{{\"heartbeats_per_second\": {:.0}}}",
        total as f64 / seconds as f64
    );
}

fn pidcheck(args: &[String]) {
    let count: usize = args[0].parse().expect("count");
    let me = std::process::id();
    let procs = matomo_archive_claim::reap::ProcFs::default();
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        // Alternate between a live pid and one that does not exist.
        let pid = if i % 2 == 0 { me } else { u32::MAX - 3 };
        let t = Instant::now();
        std::hint::black_box(procs.process(pid));
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (m, p90) = median_and_p90(samples);
    println!("{{\"proc_check_us\": {m:.2}, \"proc_check_p90_us\": {p90:.2}}}");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("heartbeats") => heartbeats(&args[1..]),
        Some("pidcheck") => pidcheck(&args[1..]),
        _ => eprintln!("usage: raw heartbeats|pidcheck ... (see benches/raw.rs)"),
    }
}
