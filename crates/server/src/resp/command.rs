//! The command table: every command's name, arity and key positions (as `COMMAND`
//! shows them), and dispatch. `PING`, `ECHO`, `QUIT`, `RESET` and `SELECT` are
//! answered here; `HELLO`, `CLIENT`, `CONFIG`, `INFO`, `COMMAND`, keyspace and CRDT
//! commands in their modules (`admin`, `keyspace`, `crdt`). A new command is one `SPECS` row and one `Kind`.
//!
//! Arity follows Redis: `n` means exactly n arguments, `-n` at least n, the name
//! counted. Error texts are Redis's, so clients and scripts that match them work.

use std::time::Instant;

use bytes::Bytes;

use super::connection::Session;
use super::crdt::{self, CrdtCommand};
use super::frame::{Protocol, Reply};
use super::{Shared, admin, keyspace};

/// What a command does; `execute` matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Echo,
    Hello,
    Quit,
    Reset,
    Auth,
    Select,
    Client,
    Config,
    Info,
    Command,
    Get,
    Set,
    Del,
    Exists,
    MGet,
    MSet,
    Expire { millis: bool },
    Persist,
    Ttl { millis: bool },
    Crdt(CrdtCommand),
}

/// One row of the table.
pub struct Spec {
    /// Lower case, as Redis names commands in replies and errors.
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// First key, last key (-1: the last argument), step between keys; 0 0 0: none.
    pub keys: (i64, i64, i64),
    pub group: &'static str,
    pub summary: &'static str,
    pub kind: Kind,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
    kind: Kind,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
        group,
        summary,
        kind,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const CONNECTION: &[&str] = &["fast", "stale", "loading", "noscript"];

/// Every command served.
#[rustfmt::skip]
pub const SPECS: &[Spec] = &[
    spec("ping", -1, CONNECTION, NO_KEYS, "connection", "Returns the server's liveliness response.", Kind::Ping),
    spec("echo", 2, CONNECTION, NO_KEYS, "connection", "Returns the given string.", Kind::Echo),
    spec("hello", -1, CONNECTION, NO_KEYS, "connection", "Handshakes with the server: protocol version, client name.", Kind::Hello),
    spec("quit", -1, CONNECTION, NO_KEYS, "connection", "Closes the connection.", Kind::Quit),
    spec("reset", 1, CONNECTION, NO_KEYS, "connection", "Resets the connection.", Kind::Reset),
    spec("auth", -2, CONNECTION, NO_KEYS, "connection", "Authenticates (no passwords exist on this interface).", Kind::Auth),
    spec("select", 2, CONNECTION, NO_KEYS, "connection", "Changes the selected database (only 0 exists).", Kind::Select),
    spec("client", -2, &["admin", "noscript", "loading", "stale"], NO_KEYS, "connection", "SETINFO, SETNAME, GETNAME, ID, INFO.", Kind::Client),
    spec("config", -2, &["admin", "noscript", "loading", "stale"], NO_KEYS, "server", "GET: configuration parameters.", Kind::Config),
    spec("info", -1, &["loading", "stale"], NO_KEYS, "server", "Returns information and statistics about the server.", Kind::Info),
    spec("command", -1, &["loading", "stale"], NO_KEYS, "server", "Returns detailed information about commands.", Kind::Command),
    spec("get", 2, READ, (1, 1, 1), "string", "Returns the string value of a key.", Kind::Get),
    spec("set", -3, WRITE, (1, 1, 1), "string", "Sets the string value of a key, with EX/PX/EXAT/PXAT/KEEPTTL, NX/XX, GET.", Kind::Set),
    spec("del", -2, &["write"], (1, -1, 1), "keyspace", "Deletes keys; returns how many existed.", Kind::Del),
    spec("exists", -2, READ, (1, -1, 1), "keyspace", "Counts the given keys that exist.", Kind::Exists),
    spec("mget", -2, READ, (1, -1, 1), "string", "Returns the values of keys.", Kind::MGet),
    spec("mset", -3, WRITE, (1, -1, 2), "string", "Sets several keys (each one alone, not atomically).", Kind::MSet),
    spec("expire", -3, &["write", "fast"], (1, 1, 1), "keyspace", "Sets a key's time to live in seconds.", Kind::Expire { millis: false }),
    spec("pexpire", -3, &["write", "fast"], (1, 1, 1), "keyspace", "Sets a key's time to live in milliseconds.", Kind::Expire { millis: true }),
    spec("persist", 2, &["write", "fast"], (1, 1, 1), "keyspace", "Removes a key's expiry.", Kind::Persist),
    spec("ttl", 2, READ, (1, 1, 1), "keyspace", "Returns a key's time to live in seconds.", Kind::Ttl { millis: false }),
    spec("pttl", 2, READ, (1, 1, 1), "keyspace", "Returns a key's time to live in milliseconds.", Kind::Ttl { millis: true }),
    spec("incr", 2, WRITE, (1, 1, 1), "string", "Increments a PN-counter by one.", Kind::Crdt(CrdtCommand::Incr)),
    spec("incrby", 3, WRITE, (1, 1, 1), "string", "Increments a PN-counter.", Kind::Crdt(CrdtCommand::IncrBy)),
    spec("decr", 2, WRITE, (1, 1, 1), "string", "Decrements a PN-counter by one.", Kind::Crdt(CrdtCommand::Decr)),
    spec("decrby", 3, WRITE, (1, 1, 1), "string", "Decrements a PN-counter.", Kind::Crdt(CrdtCommand::DecrBy)),
    spec("sadd", -3, WRITE, (1, 1, 1), "set", "Adds members to an OR-set.", Kind::Crdt(CrdtCommand::SAdd)),
    spec("srem", -3, &["write", "fast"], (1, 1, 1), "set", "Removes members from an OR-set.", Kind::Crdt(CrdtCommand::SRem)),
    spec("smembers", 2, &["readonly"], (1, 1, 1), "set", "Returns the members of an OR-set.", Kind::Crdt(CrdtCommand::SMembers)),
];

/// The row of `name`, matched without regard to case.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    SPECS
        .iter()
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// An error reply: the text after `-`, starting with its code.
#[derive(Debug)]
pub struct ErrorReply(pub String);

impl ErrorReply {
    pub fn err(message: impl std::fmt::Display) -> ErrorReply {
        ErrorReply(format!("ERR {message}"))
    }

    pub fn syntax() -> ErrorReply {
        ErrorReply::err("syntax error")
    }

    pub fn not_an_integer() -> ErrorReply {
        ErrorReply::err("value is not an integer or out of range")
    }

    pub fn wrong_type() -> ErrorReply {
        ErrorReply("WRONGTYPE Operation against a key holding the wrong kind of value".into())
    }

    pub fn arity(name: &str) -> ErrorReply {
        ErrorReply::err(format!("wrong number of arguments for '{name}' command"))
    }

    pub fn unknown_subcommand(command: &str, sub: &[u8]) -> ErrorReply {
        ErrorReply::err(format!(
            "unknown subcommand '{}'. Try {} HELP.",
            printable(sub),
            command.to_ascii_uppercase()
        ))
    }
}

pub type Outcome = Result<Reply, ErrorReply>;

/// An argument as text for an error message: at most 128 bytes, lossy UTF-8.
pub fn printable(arg: &[u8]) -> String {
    String::from_utf8_lossy(&arg[..arg.len().min(128)]).into_owned()
}

/// An integer argument as Redis reads one (`string2ll`): decimal, optional `-`.
pub fn integer(arg: &[u8]) -> Result<i64, ErrorReply> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|text| !text.starts_with('+'))
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(ErrorReply::not_an_integer)
}

/// Runs one command and counts it (`ringkv_resp_commands_total`,
/// `ringkv_resp_errors_total`, `ringkv_resp_command_duration_seconds`, by
/// `command`; names not in the table count as `unknown`).
pub async fn execute(shared: &Shared, session: &mut Session, args: Vec<Bytes>) -> Reply {
    let started = Instant::now();
    let Some(spec) = args.first().and_then(|name| lookup(name)) else {
        metrics::counter!("ringkv_resp_commands_total", "command" => "unknown").increment(1);
        metrics::counter!("ringkv_resp_errors_total", "command" => "unknown").increment(1);
        return Reply::Error(unknown_command(&args).0);
    };
    let arity_ok = match usize::try_from(spec.arity) {
        Ok(exact) => args.len() == exact,
        Err(_) => args.len() as u64 >= spec.arity.unsigned_abs(),
    };
    let outcome = if arity_ok {
        dispatch(spec, shared, session, &args).await
    } else {
        Err(ErrorReply::arity(spec.name))
    };
    let reply = outcome.unwrap_or_else(|error| Reply::Error(error.0));
    metrics::counter!("ringkv_resp_commands_total", "command" => spec.name).increment(1);
    if reply.is_error() {
        metrics::counter!("ringkv_resp_errors_total", "command" => spec.name).increment(1);
    }
    metrics::histogram!("ringkv_resp_command_duration_seconds", "command" => spec.name)
        .record(started.elapsed().as_secs_f64());
    reply
}

fn unknown_command(args: &[Bytes]) -> ErrorReply {
    let name = args.first().map(|name| printable(name)).unwrap_or_default();
    let mut message = format!("unknown command '{name}', with args beginning with: ");
    for arg in args.iter().skip(1).take(16) {
        message.push_str(&format!("'{}' ", printable(arg)));
    }
    ErrorReply::err(message)
}

async fn dispatch(spec: &Spec, shared: &Shared, session: &mut Session, args: &[Bytes]) -> Outcome {
    let app = shared.app.as_ref();
    match spec.kind {
        Kind::Ping => match args {
            [_] => Ok(Reply::Simple("PONG".into())),
            [_, message] => Ok(Reply::Bulk(message.clone())),
            _ => Err(ErrorReply::arity(spec.name)),
        },
        Kind::Echo => Ok(Reply::Bulk(args[1].clone())),
        Kind::Hello => admin::hello(session, &args[1..]),
        Kind::Quit => {
            session.closing = true;
            Ok(Reply::OK)
        }
        // As a Redis without `requirepass` answers: the default user takes any
        // password, a password alone is a configuration mistake.
        Kind::Auth => match args {
            [_, _] => Err(ErrorReply::err(
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            )),
            [_, user, _] if user.eq_ignore_ascii_case(b"default") => Ok(Reply::OK),
            [_, _, _] => Err(ErrorReply(
                "WRONGPASS invalid username-password pair or user is disabled.".into(),
            )),
            _ => Err(ErrorReply::syntax()),
        },
        Kind::Reset => {
            session.protocol = Protocol::Resp2;
            session.name = None;
            Ok(Reply::Simple("RESET".into()))
        }
        Kind::Select => match integer(&args[1])? {
            0 => Ok(Reply::OK),
            _ => Err(ErrorReply::err("DB index is out of range")),
        },
        Kind::Client => admin::client(session, args),
        Kind::Config => admin::config(shared, args),
        Kind::Info => Ok(Reply::Verbatim(admin::info(shared, &args[1..]))),
        Kind::Command => admin::command(args),
        Kind::Get => keyspace::get(app, &args[1]).await,
        Kind::Set => keyspace::set(app, &args[1..]).await,
        Kind::Del => keyspace::del(app, &args[1..]).await,
        Kind::Exists => keyspace::exists(app, &args[1..]).await,
        Kind::MGet => keyspace::mget(app, &args[1..]).await,
        Kind::MSet => {
            if args.len().is_multiple_of(2) {
                return Err(ErrorReply::arity(spec.name));
            }
            keyspace::mset(app, &args[1..]).await
        }
        Kind::Expire { millis } => keyspace::expire(app, spec.name, &args[1..], millis).await,
        Kind::Persist => keyspace::persist(app, &args[1]).await,
        Kind::Ttl { millis } => keyspace::ttl(app, &args[1], millis).await,
        Kind::Crdt(command) => crdt::execute(app, command, &args[1..]).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_knows_every_row_once() {
        assert_eq!(lookup(b"GeT").map(|spec| spec.name), Some("get"));
        assert!(lookup(b"flushall").is_none());
        for spec in SPECS {
            assert_eq!(
                SPECS.iter().filter(|other| other.name == spec.name).count(),
                1
            );
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
        }
    }

    #[test]
    fn integers_are_read_strictly() {
        assert_eq!(integer(b"-12").unwrap(), -12);
        assert!(integer(b"+1").is_err());
        assert!(integer(b" 1").is_err());
        assert!(integer(b"1.5").is_err());
        assert!(integer(b"99999999999999999999").is_err());
    }
}
