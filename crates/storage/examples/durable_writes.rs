//! Durable write throughput of `FjallEngine` under group commit (DESIGN.md §5).
//!
//! First measures what the disk can do alone: one thread writing 100 bytes into a
//! preallocated file and calling `fdatasync`, in a loop (what one fsync-per-write
//! store would get). Then, for each writer count, N OS threads each `apply` a fresh
//! key and wait for `sync()`, in a loop: every write is acknowledged durable, as a
//! replica acks one. Group commit should let N writers share each fdatasync.
//!
//! ```text
//! cargo run --release -p ringkv-storage --example durable_writes -- \
//!     [--dir DIR] [--writers 1,16,64] [--seconds 5] [--value-bytes 100] \
//!     [--durability fsync|buffered] [--journal-sync unlocked|locked] [--json]
//! ```
//! `--dir` defaults to `./target/durable-writes-bench` (the disk of the current
//! directory; /tmp may be a tmpfs, where fdatasync costs nothing). Each run uses a
//! fresh sub-directory, removed afterwards.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv_core::{ActorId, Body, Context, Hlc, Key, Record, Sibling};
use ringkv_storage::{Durability, Engine, FjallEngine, FjallOptions, JournalSync};

struct Args {
    dir: PathBuf,
    writers: Vec<usize>,
    seconds: f64,
    value_bytes: usize,
    durability: Durability,
    journal_sync: JournalSync,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::from("target/durable-writes-bench"),
        writers: vec![1, 16, 64],
        seconds: 5.0,
        value_bytes: 100,
        durability: Durability::Fsync,
        journal_sync: JournalSync::default(),
        json: false,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()?),
            "--writers" => {
                args.writers = value()?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--writers {n}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                if args.writers.contains(&0) || args.writers.is_empty() {
                    return Err("--writers takes positive counts".into());
                }
            }
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                if !(args.seconds > 0.0 && args.seconds.is_finite()) {
                    return Err("--seconds must be positive".into());
                }
            }
            "--value-bytes" => {
                args.value_bytes = value()?
                    .parse()
                    .map_err(|e| format!("--value-bytes: {e}"))?
            }
            "--durability" => {
                args.durability = match value()?.as_str() {
                    "fsync" => Durability::Fsync,
                    "buffered" => Durability::Buffered,
                    other => return Err(format!("--durability {other}: fsync or buffered")),
                }
            }
            "--journal-sync" => {
                args.journal_sync = match value()?.as_str() {
                    "unlocked" => JournalSync::Unlocked,
                    "locked" => JournalSync::Locked,
                    other => return Err(format!("--journal-sync {other}: unlocked or locked")),
                }
            }
            "--json" => args.json = true,
            "--help" | "-h" => {
                return Err(
                    "usage: durable_writes [--dir DIR] [--writers 1,16,64] [--seconds 5] \
                            [--value-bytes 100] [--durability fsync|buffered] \
                            [--journal-sync unlocked|locked] [--json]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    Ok(args)
}

/// Latency summary of one run, in microseconds.
struct Latency {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        let total: Duration = samples.iter().sum();
        Latency {
            mean_us: total.as_secs_f64() * 1e6 / samples.len().max(1) as f64,
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

struct RawSync {
    per_sec: f64,
    latency: Latency,
}

/// One thread: write `value_bytes` at the next offset of a preallocated file (like
/// fjall's journal, so no size change forces a metadata flush) and `fdatasync`.
fn raw_fdatasync(dir: &Path, seconds: f64, value_bytes: usize) -> std::io::Result<RawSync> {
    const PREALLOCATED_BYTES: u64 = 64 * 1024 * 1024;
    let path = dir.join("raw-fdatasync");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.set_len(PREALLOCATED_BYTES)?;
    file.sync_all()?;
    let block = vec![b'x'; value_bytes.max(1)];
    let mut offset = 0u64;
    let mut samples = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        let op = Instant::now();
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        samples.push(op.elapsed());
        offset = (offset + block.len() as u64) % (PREALLOCATED_BYTES - block.len() as u64);
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(RawSync {
        per_sec: samples.len() as f64 / elapsed,
        latency: Latency::of(samples),
    })
}

struct Run {
    writers: usize,
    writes: u64,
    per_sec: f64,
    latency: Latency,
    syncs: u64,
    writes_per_sync: f64,
    persist_mean_us: f64,
}

/// `writers` threads, each: apply a fresh key, wait until it is durable, repeat.
fn durable_writes(dir: &Path, args: &Args, writers: usize) -> Result<Run, String> {
    let engine = FjallEngine::open(
        dir,
        FjallOptions {
            durability: args.durability,
            journal_sync: args.journal_sync,
            ..FjallOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let engine = Arc::new(engine);
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let per_thread: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|thread| {
                let (engine, value) = (&engine, &value);
                scope.spawn(move || write_loop(engine.as_ref(), thread, value, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("writer panicked".into()))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for thread in per_thread {
        samples.extend(thread?);
    }
    let stats = engine.sync_stats();
    let writes = samples.len() as u64;
    Ok(Run {
        writers,
        writes,
        per_sec: writes as f64 / elapsed,
        latency: Latency::of(samples),
        syncs: stats.syncs,
        writes_per_sync: stats.writes_synced as f64 / stats.syncs.max(1) as f64,
        persist_mean_us: stats.persist_time.as_secs_f64() * 1e6 / stats.syncs.max(1) as f64,
    })
}

fn write_loop(
    engine: &FjallEngine,
    thread: usize,
    value: &Bytes,
    deadline: Instant,
) -> Result<Vec<Duration>, String> {
    let mut samples = Vec::new();
    for i in 0u64.. {
        let op = Instant::now();
        if op >= deadline {
            break;
        }
        let key = Key::from_stored(Bytes::from(format!("bench/{thread}/{i}")))
            .map_err(|e| e.to_string())?;
        let mut record = Record::default();
        let sibling = Sibling {
            hlc: Hlc(i),
            expires_at_ms: None,
            body: Body::Bytes(value.clone()),
        };
        record.update(&Context::default(), ActorId(thread as u64 + 1), sibling);
        engine
            .apply(&key, &mut |_| Some(record.clone()))
            .map_err(|e| e.to_string())?;
        engine.sync().wait().map_err(|e| e.to_string())?;
        samples.push(op.elapsed());
    }
    Ok(samples)
}

/// The file system type holding `dir` (from /proc/self/mounts), to warn about tmpfs.
fn file_system_of(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mount, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(mount)
                .then(|| (mount.len(), kind.to_owned()))
        })
        .max()
        .map(|(_, kind)| kind)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("durable_writes: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let base = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
    let fs = file_system_of(&base).unwrap_or_else(|| "unknown".into());
    if fs == "tmpfs" || fs == "ramfs" {
        eprintln!(
            "warning: {} is on {fs}: fdatasync is free there; use --dir on a disk",
            base.display()
        );
    }
    let result = measure(&args, &base, &fs);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn measure(args: &Args, base: &Path, fs: &str) -> Result<(), String> {
    let raw = raw_fdatasync(base, args.seconds, args.value_bytes)
        .map_err(|e| format!("raw fdatasync in {}: {e}", base.display()))?;
    if !args.json {
        println!(
            "dir {} ({fs}), {} s per run, {} B values, durability {:?}, journal sync {:?}",
            base.display(),
            args.seconds,
            args.value_bytes,
            args.durability,
            args.journal_sync
        );
        println!(
            "raw fdatasync (1 thread): {:.0}/s, mean {:.0} us, p50 {:.0} us, p99 {:.0} us",
            raw.per_sec, raw.latency.mean_us, raw.latency.p50_us, raw.latency.p99_us
        );
        println!(
            "{:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>11} {:>8} {:>8}",
            "writers",
            "writes",
            "writes/s",
            "mean_us",
            "p50_us",
            "p99_us",
            "max_us",
            "fsyncs",
            "writes/sync",
            "x1writer",
            "xrawsync"
        );
    } else {
        println!(
            "{{\"kind\":\"raw_fdatasync\",\"dir\":{:?},\"fs\":{fs:?},\"per_sec\":{:.1},\"mean_us\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
            base.display().to_string(),
            raw.per_sec,
            raw.latency.mean_us,
            raw.latency.p50_us,
            raw.latency.p99_us
        );
    }
    let mut one_writer: Option<f64> = None;
    for (index, &writers) in args.writers.iter().enumerate() {
        let dir = base.join(format!("engine-{index}-{writers}"));
        let run = durable_writes(&dir, args, writers)?;
        if writers == 1 {
            one_writer = Some(run.per_sec);
        }
        let vs_one = one_writer.map(|one| run.per_sec / one);
        let vs_raw = run.per_sec / raw.per_sec;
        if args.json {
            println!(
                "{{\"kind\":\"durable_writes\",\"writers\":{},\"writes\":{},\"per_sec\":{:.1},\"mean_us\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"fsyncs\":{},\"writes_per_fsync\":{:.2},\"persist_mean_us\":{:.1},\"ratio_to_1_writer\":{},\"ratio_to_raw_fdatasync\":{:.2}}}",
                run.writers,
                run.writes,
                run.per_sec,
                run.latency.mean_us,
                run.latency.p50_us,
                run.latency.p99_us,
                run.latency.max_us,
                run.syncs,
                run.writes_per_sync,
                run.persist_mean_us,
                vs_one.map_or("null".into(), |r| format!("{r:.2}")),
                vs_raw
            );
        } else {
            println!(
                "{:>7} {:>10} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>11.1} {:>10.0} {:>8} {:>8.2}",
                run.writers,
                run.writes,
                run.per_sec,
                run.latency.mean_us,
                run.latency.p50_us,
                run.latency.p99_us,
                run.latency.max_us,
                run.syncs,
                run.writes_per_sync,
                run.persist_mean_us,
                vs_one.map_or("n/a".into(), |r| format!("{r:.2}")),
                vs_raw
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
