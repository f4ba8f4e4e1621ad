//! Connection and server commands: `HELLO`, `CLIENT`, `CONFIG`, `INFO`, `COMMAND`,
//! answered well enough for redis-cli, redis-benchmark and client libraries
//! (which send `CLIENT SETINFO` and `HELLO 3` on connect, and `CONFIG GET save`
//! before a benchmark).

use bytes::Bytes;

use super::command::{ErrorReply, Outcome, SPECS, Spec, integer, lookup, printable};
use super::connection::Session;
use super::frame::{Protocol, Reply};
use super::{MAX_CONNECTIONS, REDIS_VERSION, Shared};

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches the protocol and
/// answers who we are (a map in RESP3).
pub fn hello(session: &mut Session, args: &[Bytes]) -> Outcome {
    let mut protocol = session.protocol;
    let mut name = None;
    if let Some(version) = args.first() {
        protocol = match integer(version) {
            Ok(2) => Protocol::Resp2,
            Ok(3) => Protocol::Resp3,
            Ok(_) => return Err(ErrorReply("NOPROTO unsupported protocol version".into())),
            Err(_) => {
                return Err(ErrorReply::err(
                    "Protocol version is not an integer or out of range",
                ));
            }
        };
        let mut at = 1;
        while at < args.len() {
            let option = &args[at];
            let remaining = args.len() - at - 1;
            if option.eq_ignore_ascii_case(b"AUTH") && remaining >= 2 {
                // No passwords on this interface: the default user is open, as in
                // a Redis without `requirepass`.
                if !args[at + 1].eq_ignore_ascii_case(b"default") {
                    return Err(ErrorReply(
                        "WRONGPASS invalid username-password pair or user is disabled.".into(),
                    ));
                }
                at += 3;
            } else if option.eq_ignore_ascii_case(b"SETNAME") && remaining >= 1 {
                name = Some(valid_client_name(&args[at + 1])?);
                at += 2;
            } else {
                return Err(ErrorReply::err(format!(
                    "Syntax error in HELLO option '{}'",
                    printable(option)
                )));
            }
        }
    }
    session.protocol = protocol;
    if let Some(name) = name {
        session.name = Some(name);
    }
    Ok(Reply::Map(vec![
        (Reply::text("server"), Reply::text("redis")),
        (Reply::text("version"), Reply::text(REDIS_VERSION)),
        (Reply::text("proto"), Reply::Integer(protocol.version())),
        (Reply::text("id"), Reply::Integer(id_i64(session.id))),
        (Reply::text("mode"), Reply::text("standalone")),
        (Reply::text("role"), Reply::text("master")),
        (Reply::text("modules"), Reply::Array(Vec::new())),
    ]))
}

fn id_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A client name: printable ASCII without blanks (Redis's rule); empty clears it.
fn valid_client_name(name: &Bytes) -> Result<Bytes, ErrorReply> {
    if name.iter().all(|byte| (b'!'..=b'~').contains(byte)) {
        Ok(name.clone())
    } else {
        Err(ErrorReply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

pub fn client(session: &mut Session, args: &[Bytes]) -> Outcome {
    let sub = args[1].to_ascii_lowercase();
    let arity = |wanted: usize| {
        if args.len() == wanted {
            Ok(())
        } else {
            Err(ErrorReply::arity(&format!(
                "client|{}",
                String::from_utf8_lossy(&sub)
            )))
        }
    };
    match sub.as_slice() {
        b"setinfo" => {
            arity(4)?;
            let value = &args[3];
            if !value.iter().all(|byte| (b'!'..=b'~').contains(byte)) {
                return Err(ErrorReply::err(format!(
                    "{} cannot contain spaces, newlines or special characters.",
                    printable(&args[2])
                )));
            }
            match args[2].to_ascii_lowercase().as_slice() {
                b"lib-name" => session.lib_name = Some(value.clone()),
                b"lib-ver" => session.lib_version = Some(value.clone()),
                _ => {
                    return Err(ErrorReply::err(format!(
                        "Unrecognized option '{}'",
                        printable(&args[2])
                    )));
                }
            }
            Ok(Reply::OK)
        }
        b"setname" => {
            arity(3)?;
            let name = valid_client_name(&args[2])?;
            session.name = (!name.is_empty()).then_some(name);
            Ok(Reply::OK)
        }
        b"getname" => {
            arity(2)?;
            Ok(session.name.clone().map_or(Reply::Null, Reply::Bulk))
        }
        b"id" => {
            arity(2)?;
            Ok(Reply::Integer(id_i64(session.id)))
        }
        b"info" => {
            arity(2)?;
            Ok(Reply::Verbatim(client_line(session)))
        }
        _ => Err(ErrorReply::unknown_subcommand("client", &args[1])),
    }
}

fn client_line(session: &Session) -> String {
    let text = |value: &Option<Bytes>| value.as_deref().map(printable).unwrap_or_default();
    format!(
        "id={} addr={} name={} db=0 resp={} lib-name={} lib-ver={}\n",
        session.id,
        session.peer,
        text(&session.name),
        session.protocol.version(),
        text(&session.lib_name),
        text(&session.lib_version),
    )
}

/// The parameters `CONFIG GET` shows: enough for redis-benchmark and client
/// libraries, which ask for `save` and `appendonly` when they start.
fn parameters(shared: &Shared) -> Vec<(&'static str, String)> {
    vec![
        ("appendonly", "no".into()),
        ("bind", shared.addr.ip().to_string()),
        ("databases", "1".into()),
        ("maxclients", MAX_CONNECTIONS.to_string()),
        ("maxmemory", "0".into()),
        ("port", shared.addr.port().to_string()),
        (
            "proto-max-bulk-len",
            shared.limits.max_bulk_bytes.to_string(),
        ),
        ("save", String::new()),
        ("timeout", "0".into()),
    ]
}

pub fn config(shared: &Shared, args: &[Bytes]) -> Outcome {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        b"get" => {
            if args.len() < 3 {
                return Err(ErrorReply::arity("config|get"));
            }
            let pairs = parameters(shared)
                .into_iter()
                .filter(|(name, _)| {
                    args[2..]
                        .iter()
                        .any(|pattern| glob_match(pattern, name.as_bytes()))
                })
                .map(|(name, value)| (Reply::text(name), Reply::bulk(value)))
                .collect();
            Ok(Reply::Map(pairs))
        }
        b"resetstat" => Ok(Reply::OK),
        b"set" => Err(ErrorReply::err(
            "CONFIG SET is not supported: ringkv is configured by its TOML file, flags and RINGKV_* variables",
        )),
        _ => Err(ErrorReply::unknown_subcommand("config", &args[1])),
    }
}

/// Redis's glob (`*`, `?`, literal bytes), without regard to ASCII case.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(byte) if *byte == b'?' || byte.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..]
        .iter()
        .all(|byte| *byte == b'*')
}

/// `INFO [section ...]`: Redis's format, `# Section` then `field:value` lines.
pub fn info(shared: &Shared, sections: &[Bytes]) -> String {
    let app = &shared.app;
    let wanted = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|section| {
                let section = section.to_ascii_lowercase();
                section == name.as_bytes()
                    || matches!(section.as_slice(), b"all" | b"everything" | b"default")
            })
    };
    let mut text = String::new();
    if wanted("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nringkv_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            shared.addr.port(),
            shared.started.elapsed().as_secs(),
        ));
    }
    if wanted("clients") {
        text.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{MAX_CONNECTIONS}\r\n\r\n",
            shared.connected()
        ));
    }
    if wanted("replication") {
        text.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if wanted("cluster") {
        let members = app.coordinator.membership().members().len();
        text.push_str(&format!(
            "# Cluster\r\ncluster_enabled:0\r\nringkv_node_id:{}\r\nringkv_members:{members}\r\nringkv_replication_factor:{}\r\nringkv_read_quorum:{}\r\nringkv_write_quorum:{}\r\nringkv_conflict_policy:{}\r\n\r\n",
            app.node_id,
            app.replication_factor,
            app.read_quorum,
            app.write_quorum,
            match app.node.policy() {
                ringkv_core::ConflictPolicy::Siblings => "siblings (lww on resp)",
                ringkv_core::ConflictPolicy::Lww => "lww",
            },
        ));
    }
    if wanted("keyspace") {
        // Key counts would need a scan of every replica; none is shown.
        text.push_str("# Keyspace\r\n");
    }
    text
}

/// `COMMAND`, `COMMAND COUNT|LIST|INFO|DOCS`.
pub fn command(args: &[Bytes]) -> Outcome {
    let Some(sub) = args.get(1).map(|sub| sub.to_ascii_lowercase()) else {
        return Ok(Reply::Array(SPECS.iter().map(command_info).collect()));
    };
    let named =
        || -> Vec<Option<&'static Spec>> { args[2..].iter().map(|name| lookup(name)).collect() };
    match sub.as_slice() {
        b"count" if args.len() == 2 => Ok(Reply::Integer(i64::try_from(SPECS.len()).unwrap_or(0))),
        b"list" => Ok(Reply::Array(
            SPECS.iter().map(|spec| Reply::text(spec.name)).collect(),
        )),
        b"info" => Ok(Reply::Array(if args.len() == 2 {
            SPECS.iter().map(command_info).collect()
        } else {
            named()
                .into_iter()
                .map(|spec| spec.map_or(Reply::Null, command_info))
                .collect()
        })),
        b"docs" => {
            let specs: Vec<&Spec> = if args.len() == 2 {
                SPECS.iter().collect()
            } else {
                named().into_iter().flatten().collect()
            };
            Ok(Reply::Map(
                specs
                    .into_iter()
                    .map(|spec| {
                        let docs = Reply::Map(vec![
                            (Reply::text("summary"), Reply::text(spec.summary)),
                            (Reply::text("since"), Reply::text("1.0.0")),
                            (Reply::text("group"), Reply::text(spec.group)),
                        ]);
                        (Reply::text(spec.name), docs)
                    })
                    .collect(),
            ))
        }
        b"count" => Err(ErrorReply::arity("command|count")),
        _ => Err(ErrorReply::unknown_subcommand("command", &args[1])),
    }
}

/// One command as `COMMAND INFO` shows it (Redis 7's ten fields).
fn command_info(spec: &Spec) -> Reply {
    let (first, last, step) = spec.keys;
    Reply::Array(vec![
        Reply::text(spec.name),
        Reply::Integer(spec.arity),
        Reply::Set(
            spec.flags
                .iter()
                .map(|flag| Reply::Simple((*flag).into()))
                .collect(),
        ),
        Reply::Integer(first),
        Reply::Integer(last),
        Reply::Integer(step),
        Reply::Set(Vec::new()),
        Reply::Set(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_match(b"*", b"save"));
        assert!(glob_match(b"SAVE", b"save"));
        assert!(glob_match(b"app*", b"appendonly"));
        assert!(glob_match(b"*only", b"appendonly"));
        assert!(glob_match(b"s?ve", b"save"));
        assert!(glob_match(b"*a*e*", b"save"));
        assert!(!glob_match(b"sav", b"save"));
        assert!(!glob_match(b"x*", b"save"));
        assert!(!glob_match(b"", b"save"));
    }
}
