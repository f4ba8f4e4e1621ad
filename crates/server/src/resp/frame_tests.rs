#![allow(clippy::unwrap_used)] // Tests fail loudly on anything unexpected.

use super::*;
use proptest::prelude::*;

const LIMITS: FrameLimits = FrameLimits {
    max_args: 8,
    max_bulk_bytes: 16,
    max_inline_bytes: 64,
    max_command_bytes: 40,
};

fn parse_all(input: &[u8]) -> Result<Vec<Parsed>, ProtocolError> {
    let mut buf = BytesMut::from(input);
    let mut found = Vec::new();
    loop {
        match parse(&mut buf, &LIMITS)? {
            Parsed::Incomplete { .. } => return Ok(found),
            parsed => found.push(parsed),
        }
    }
}

fn command(args: &[&str]) -> Parsed {
    Parsed::Command(
        args.iter()
            .map(|arg| Bytes::copy_from_slice(arg.as_bytes()))
            .collect(),
    )
}

#[test]
fn pipelined_multibulk_commands_parse_one_after_another() {
    let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*0\r\n";
    let parsed = parse_all(input).unwrap();
    assert_eq!(
        parsed,
        [
            command(&["GET", "k"]),
            command(&["SET", "k", ""]),
            Parsed::Empty
        ]
    );
}

#[test]
fn a_command_split_anywhere_waits_for_the_rest() {
    let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    for cut in 0..input.len() {
        let mut buf = BytesMut::from(&input[..cut]);
        let parsed = parse(&mut buf, &LIMITS).unwrap();
        let Parsed::Incomplete { needed } = parsed else {
            panic!("cut at {cut} parsed as {parsed:?}");
        };
        assert!(needed > cut, "cut at {cut} needs {needed}");
        assert_eq!(buf.len(), cut, "nothing consumed");
        buf.extend_from_slice(&input[cut..]);
        assert_eq!(
            parse(&mut buf, &LIMITS).unwrap(),
            command(&["SET", "key", "value"])
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn inline_commands_split_on_blanks_and_honour_quotes() {
    let parsed = parse_all(b"PING\r\nset k \"a b\\x41\\n\" 'it\\'s'\n\r\n").unwrap();
    assert_eq!(
        parsed,
        [
            command(&["PING"]),
            command(&["set", "k", "a bA\n", "it's"]),
            Parsed::Empty
        ]
    );
    assert_eq!(
        parse_all(b"set k \"open\r\n"),
        Err(ProtocolError::UnbalancedQuotes)
    );
    assert_eq!(
        parse_all(b"set k \"a\"b\r\n"),
        Err(ProtocolError::UnbalancedQuotes)
    );
}

#[test]
fn limits_are_checked_before_the_bytes_arrive() {
    // Announced, not sent: refused from the header alone.
    assert_eq!(
        parse_all(b"*9\r\n"),
        Err(ProtocolError::TooManyArgs { count: 9, max: 8 })
    );
    assert_eq!(
        parse_all(b"*1\r\n$17\r\n"),
        Err(ProtocolError::BulkTooLarge { len: 17, max: 16 })
    );
    assert_eq!(
        parse_all(b"*3\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n"),
        Err(ProtocolError::CommandTooLarge { max: 40 })
    );
    assert_eq!(parse_all(&[b'x'; 65]), Err(ProtocolError::InlineTooBig));
    assert!(matches!(parse_all(&[b'x'; 64]).unwrap()[..], []));
    let mut long_count = b"*".to_vec();
    long_count.extend([b'1'; 40]);
    assert_eq!(parse_all(&long_count), Err(ProtocolError::CountTooBig));
    assert_eq!(
        parse_all(b"set a b c d e f g h i\r\n"),
        Err(ProtocolError::TooManyArgs { count: 10, max: 8 })
    );
}

#[test]
fn malformed_headers_are_protocol_errors() {
    for (input, error) in [
        (&b"*x\r\n"[..], ProtocolError::InvalidMultibulkLength),
        (b"*+1\r\n", ProtocolError::InvalidMultibulkLength),
        (
            b"*99999999999999999999\r\n",
            ProtocolError::InvalidMultibulkLength,
        ),
        (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(':')),
        (b"*1\r\n*1\r\n", ProtocolError::ExpectedBulk('*')),
        (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
        (b"*1\r\n$a\r\n", ProtocolError::InvalidBulkLength),
        (b"*1\r\n$1\r\nab\r\n", ProtocolError::ExpectedCrlf),
    ] {
        assert_eq!(
            parse_all(input),
            Err(error),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(parse_all(b"*-1\r\n").unwrap(), [Parsed::Empty]);
}

#[test]
fn replies_encode_per_protocol() {
    let encode = |reply: &Reply, protocol| {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    };
    let map = Reply::Map(vec![(Reply::text("proto"), Reply::Integer(3))]);
    assert_eq!(encode(&map, Protocol::Resp3), "%1\r\n$5\r\nproto\r\n:3\r\n");
    assert_eq!(encode(&map, Protocol::Resp2), "*2\r\n$5\r\nproto\r\n:3\r\n");
    assert_eq!(encode(&Reply::Null, Protocol::Resp3), "_\r\n");
    assert_eq!(encode(&Reply::Null, Protocol::Resp2), "$-1\r\n");
    let set = Reply::Set(vec![Reply::text("a")]);
    assert_eq!(encode(&set, Protocol::Resp3), "~1\r\n$1\r\na\r\n");
    assert_eq!(encode(&set, Protocol::Resp2), "*1\r\n$1\r\na\r\n");
    let info = Reply::Verbatim("# Server\r\n".into());
    assert_eq!(
        encode(&info, Protocol::Resp3),
        "=14\r\ntxt:# Server\r\n\r\n"
    );
    assert_eq!(encode(&info, Protocol::Resp2), "$10\r\n# Server\r\n\r\n");
    let error = Reply::Error("ERR bad\r\nthing".into());
    assert_eq!(encode(&error, Protocol::Resp2), "-ERR bad  thing\r\n");
}

proptest! {
    /// Whatever the bytes, parsing returns (never panics), consumes only whole
    /// commands, and keeps every command within the limits.
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&input[..]);
        for _ in 0..input.len() + 1 {
            let before = buf.len();
            match parse(&mut buf, &LIMITS) {
                Ok(Parsed::Command(args)) => {
                    prop_assert!(!args.is_empty() && args.len() <= LIMITS.max_args);
                    prop_assert!(buf.len() < before);
                }
                Ok(Parsed::Empty) => prop_assert!(buf.len() < before),
                Ok(Parsed::Incomplete { needed }) => {
                    prop_assert!(needed > buf.len());
                    break;
                }
                Err(_) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
            }
        }
    }

    /// Mostly-valid streams (RESP bytes, shuffled pieces) never panic either.
    #[test]
    fn resp_like_bytes_never_panic(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"\r\n"[..]), Just(&b"-1"[..]),
                Just(&b"3"[..]), Just(&b"17"[..]), Just(&b"\""[..]), Just(&b"'"[..]),
                Just(&b"\\x4"[..]), Just(&b"GET"[..]), Just(&b" "[..]), Just(&b"\n"[..]),
            ],
            0..64,
        )
    ) {
        let input: Vec<u8> = pieces.concat();
        let mut buf = BytesMut::from(&input[..]);
        for _ in 0..input.len() + 1 {
            match parse(&mut buf, &LIMITS) {
                Ok(Parsed::Command(_) | Parsed::Empty) => {}
                Ok(Parsed::Incomplete { .. }) | Err(_) => break,
            }
        }
    }

    /// Any command encoded as a multibulk parses back to itself.
    #[test]
    fn encoded_commands_round_trip(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5), 1..8)
    ) {
        let mut out = BytesMut::new();
        Reply::Array(args.iter().map(|arg| Reply::bulk(arg.clone())).collect())
            .encode(Protocol::Resp2, &mut out);
        let expected: Vec<Bytes> = args.iter().map(|arg| Bytes::from(arg.clone())).collect();
        prop_assert_eq!(parse(&mut out, &LIMITS).unwrap(), Parsed::Command(expected));
        prop_assert!(out.is_empty());
    }
}
