//! Tests of configuration loading: precedence, errors naming keys, round trips.

use super::kinds::parse_size;
use super::*;
use clap::Parser as _;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: ServerArgs,
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// Loads with these clap-parsed flags, env variables and, if not empty, TOML file.
fn load_with(flags: &[&str], env: &[(&str, &str)], toml: &str) -> Result<Config, ConfigError> {
    let file = toml_file(toml);
    let mut argv = vec!["ringkv".to_owned()];
    if !toml.is_empty() {
        argv.extend(["--config".to_owned(), file.path().display().to_string()]);
    }
    argv.extend(flags.iter().map(|flag| flag.to_string()));
    let args = Cli::try_parse_from(argv).unwrap().args;
    load_from(&args, &|var| {
        env.iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| v.to_string())
    })
}

fn error_with(flags: &[&str], env: &[(&str, &str)], toml: &str) -> String {
    load_with(flags, env, toml).unwrap_err().to_string()
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let config = load_with(&[], &[], "").unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!((config.replication_factor, config.vnodes), (3, 256));
    assert_eq!(config.max_value_bytes, 16 * 1024 * 1024);
    assert_eq!(config.tombstone_gc_grace_ms, 10 * 24 * 3600 * 1000);
    assert_eq!(config.purge_interval_ms, 60_000);
    assert_eq!(config.conflict_policy, ConflictPolicy::Siblings);
}

/// Each key is set in a different subset of sources; the highest one must win.
#[test]
fn flag_beats_env_beats_file_beats_default() {
    let toml =
        "replication_factor = 5\nvnodes = 64\nhttp_addr = \"0.0.0.0:1\"\ndurability = \"BUFFERED\"";
    let env = [
        ("RINGKV_REPLICATION_FACTOR", "6"),
        ("RINGKV_VNODES", "32"),
        ("RINGKV_NODE_ID", ""),
    ];
    let config = load_with(&["--replication-factor", "4"], &env, toml).unwrap();
    assert_eq!(config.replication_factor, 4);
    assert_eq!(config.vnodes, 32);
    assert_eq!(config.http_addr.to_string(), "0.0.0.0:1");
    assert_eq!(config.durability, Durability::Buffered);
    assert_eq!(config.read_quorum, 2);
    assert_eq!(
        config.node_id, None,
        "an empty env variable counts as unset"
    );
}

#[test]
fn config_file_may_be_named_by_env() {
    let file = toml_file("vnodes = 7\nnode_id = 42\n");
    let path = file.path().display().to_string();
    let config = load_with(&["--print-config"], &[("RINGKV_CONFIG", &path)], "").unwrap();
    assert_eq!((config.vnodes, config.node_id), (7, Some(42)));
    assert!(
        Cli::try_parse_from(["ringkv", "--print-config"])
            .unwrap()
            .args
            .print_config
    );
}

#[test]
fn bad_value_names_key_source_value_and_what_is_allowed() {
    let message = error_with(&[], &[("RINGKV_REPLICATION_FACTOR", "7x")], "");
    let expected = "invalid value \"7x\" for replication_factor (from env RINGKV_REPLICATION_FACTOR): \
                    expected an integer 1..=7";
    assert_eq!(message, expected);
}

#[test]
fn cross_key_error_names_both_keys_and_sources() {
    let message = error_with(&["--read-quorum", "4"], &[], "");
    let expected = "read_quorum = 4 (from flag --read-quorum) must be <= replication_factor = 3 (from the default)";
    assert_eq!(message, expected);
}

/// Each case is `SOURCE => FRAGMENTS`: SOURCE is `flag --k=v ...`, `env VAR=value` or
/// `file TOML`; the message must contain each `|`-separated fragment (`!`: must not).
#[test]
fn bad_inputs_are_errors_naming_the_key() {
    let cases = [
        "flag --vnodes=4097 => vnodes|flag --vnodes|1..=4096",
        "flag --node-id=-1 => node_id|\"-1\"",
        "file gossip_interval_ms = 0 => gossip_interval_ms|\"0\"|(from file /",
        "file hint_ttl_ms = 2592000001 => hint_ttl_ms|1..=2592000000",
        "flag --purge-interval-ms=0 => purge_interval_ms|flag --purge-interval-ms|1..=2592000000",
        "env RINGKV_PURGE_INTERVAL_MS=1m => purge_interval_ms|\"1m\"",
        "file max_key_bytes = 32769 => max_key_bytes|1..=32768",
        "file max_value_bytes = \"2GiB\" => max_value_bytes|\"2GiB\"",
        "env RINGKV_MAX_HINTS_BYTES=10 GiBs => max_hints_bytes|\"10 GiBs\"",
        "file streaming_bytes_per_sec = 0 => streaming_bytes_per_sec|\"0\"",
        "flag --http-addr=localhost => http_addr|flag --http-addr|ip:port",
        "env RINGKV_PEER_ADDR=1.2.3.4 => peer_addr|env RINGKV_PEER_ADDR",
        "env RINGKV_CONFLICT_POLICY=newest => conflict_policy|\"siblings\", \"lww\"",
        "flag --durability=sometimes => durability|\"fsync\", \"buffered\"",
        "flag --data-dir= => data_dir|non-empty",
        "flag --cluster-secret=hunter2 => cluster_secret|7 bytes|16..=1024|!hunter2",
        "file replicaton_factor = 3 => `replicaton_factor`|did you mean `replication_factor`?",
        "file [server]\nport = 1 => unknown key `server`",
        "file http_addr = 8080 => wrong type for http_addr|found integer 8080|a string",
        "file vnodes = 1.5 => vnodes|found float",
        "file durability = true => durability|found boolean",
        "file seeds = [\"a:1\", 2] => seeds|found array|array of strings",
        "file seeds = 7 => seeds|found integer",
        "env RINGKV_REPLICATION_FACTOR=1 => read_quorum|env RINGKV_REPLICATION_FACTOR",
        "flag --write-quorum=3 --replication-factor=2 => write_quorum = 3|replication_factor = 2",
        "file suspicion_threshold_ms = 30000 => suspicion_threshold_ms|< down_threshold_ms",
        "file down_threshold_ms = 600000 => down_threshold_ms|< permanent_failure_threshold_ms",
    ];
    for case in cases {
        let (source, fragments) = case.split_once(" => ").unwrap();
        let message = match source.split_once(' ').unwrap() {
            ("flag", flags) => error_with(&flags.split(' ').collect::<Vec<_>>(), &[], ""),
            ("env", pair) => error_with(&[], &[pair.split_once('=').unwrap()], ""),
            (_, toml) => error_with(&[], &[], toml),
        };
        for fragment in fragments.split('|') {
            match fragment.strip_prefix('!') {
                Some(absent) => assert!(!message.contains(absent), "{case}: {message:?}"),
                None => assert!(message.contains(fragment), "{case}: {message:?}"),
            }
        }
    }
}

#[test]
fn unreadable_or_invalid_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let args = ServerArgs {
        config: Some(missing.clone()),
        ..ServerArgs::default()
    };
    let message = load_from(&args, &|_| None).unwrap_err().to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    let file = toml_file("vnodes = = 3\n");
    let args = ServerArgs {
        config: Some(file.path().to_owned()),
        ..ServerArgs::default()
    };
    let message = load_from(&args, &|_| None).unwrap_err().to_string();
    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("not valid TOML"), "{message}");
}

#[test]
fn sizes_accept_integers_and_units() {
    let cases = [
        ("100", 100),
        ("100B", 100),
        ("1KiB", 1024),
        ("512MiB", 512 << 20),
        ("50 MB", 50_000_000),
        ("10gb", 10_000_000_000),
        (" 2 TiB ", 2 << 40),
        ("1kb", 1000),
        ("3TB", 3_000_000_000_000),
    ];
    for (text, bytes) in cases {
        assert_eq!(parse_size(text), Some(bytes), "{text}");
    }
    for bad in [
        "",
        "MB",
        "1.5GB",
        "-1",
        "10 XB",
        "99999999999999999999",
        "20000000TB",
        "1 K",
    ] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
    let config = load_with(
        &[],
        &[],
        "max_hints_bytes = 12345\nstreaming_bytes_per_sec = \"1 MiB\"",
    )
    .unwrap();
    assert_eq!(
        (config.max_hints_bytes, config.streaming_bytes_per_sec),
        (12345, 1 << 20)
    );
    let config = load_with(&["--max-key-bytes", "32KiB"], &[], "").unwrap();
    assert_eq!(config.max_key_bytes, 32768);
    // 0 hints is a choice (no hinted handoff); 0 streaming is not.
    let config = load_with(&["--max-hints-bytes", "0"], &[], "").unwrap();
    assert_eq!(config.max_hints_bytes, 0);
    assert!(load_with(&["--streaming-bytes-per-sec", "0"], &[], "").is_err());
}

#[test]
fn seeds_come_from_lists_or_comma_separated_text() {
    let toml = "seeds = [\"10.0.0.1:7080\", \"node-b.example:7080\", \"[::1]:7081\"]";
    let config = load_with(&[], &[], toml).unwrap();
    assert_eq!(
        config.seeds,
        ["10.0.0.1:7080", "node-b.example:7080", "[::1]:7081"]
    );
    assert_eq!(
        load_with(&[], &[], "seeds = \"a:1, b:2,\"").unwrap().seeds,
        ["a:1", "b:2"]
    );
    assert_eq!(
        load_with(&["--seeds", "a:1,b:2"], &[], "").unwrap().seeds,
        ["a:1", "b:2"]
    );
    assert_eq!(
        load_with(&[], &[("RINGKV_SEEDS", "x:65535")], "")
            .unwrap()
            .seeds,
        ["x:65535"]
    );
    for bad in [
        "a", ":7080", "a:0", "a:65536", "a:+80", "a:", "::1:7080", "a b:1",
    ] {
        let message = error_with(&["--seeds", &format!("ok:1,{bad}")], &[], "");
        assert!(
            message.contains("for seeds (from flag --seeds)") && message.contains(bad),
            "{message}"
        );
    }
}

/// Every key is set away from its default (checked), so a key lost on the way fails.
#[test]
fn to_toml_round_trips() {
    let flags = "--node-id=18446744073709551615 --http-addr=[::1]:1 --resp-addr=0.0.0.0:2 \
        --peer-addr=10.1.2.3:3 --seeds=a:1,[::1]:2 --replication-factor=5 --read-quorum=4 \
        --write-quorum=1 --quorum-preset=strong --vnodes=16 --conflict-policy=lww --durability=buffered \
        --group-commit-interval-us=0 \
        --gossip-interval-ms=10 --suspicion-threshold-ms=20 --down-threshold-ms=30 \
        --permanent-failure-threshold-ms=40 --hint-ttl-ms=50 --max-hints-bytes=6KB \
        --streaming-bytes-per-sec=7MiB --anti-entropy-interval-ms=80 --request-timeout-ms=90 \
        --tombstone-gc-grace-ms=100 --purge-interval-ms=105 --max-key-bytes=110 \
        --max-value-bytes=120 --max-buffered-request-bytes=130MiB --request-stall-timeout-ms=140";
    let flags: Vec<_> = flags.split_whitespace().collect();
    let custom = Config {
        data_dir: PathBuf::from("/var/lib/ringkv \"x\" \\ é"),
        cluster_secret: Some("s3cret\\with\"quotes\"\t".into()),
        ..load_with(&flags, &[], "").unwrap()
    };
    let (text, default) = (custom.to_toml(), Config::default().to_toml());
    assert_eq!(text.lines().count(), KEYS.len() + 1, "{text}");
    assert!(
        text.lines()
            .skip(1)
            .all(|line| !default.lines().any(|d| d == line))
    );
    assert!(!default.contains("node_id") && default.contains("max_hints_bytes = 10000000000\n"));
    for original in [
        custom,
        Config::default(),
        Config {
            node_id: Some(7),
            ..Config::default()
        },
    ] {
        let text = original.to_toml();
        assert_eq!(load_with(&[], &[], &text).unwrap(), original, "{text}");
    }
}

#[test]
fn quorum_preset_sets_defaults_that_explicit_quorums_override() {
    let config = load_with(&["--quorum-preset", "strong"], &[], "").unwrap();
    assert_eq!((config.read_quorum, config.write_quorum), (3, 3));
    let config = load_with(&["--quorum-preset", "fast_reads"], &[], "").unwrap();
    assert_eq!((config.read_quorum, config.write_quorum), (1, 2));
    let config = load_with(&["--read-quorum", "2"], &[], "quorum_preset = \"eventual\"").unwrap();
    assert_eq!((config.read_quorum, config.write_quorum), (2, 1));
    let error = load_with(&["--quorum-preset", "sturdy"], &[], "")
        .unwrap_err()
        .to_string();
    assert!(error.contains("quorum_preset"), "{error}");
    // A strong preset needs N >= 3.
    let error = load_with(
        &["--quorum-preset", "strong", "--replication-factor", "2"],
        &[],
        "",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("read_quorum"), "{error}");
}
