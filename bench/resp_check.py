"""redis-py against a ringkv cluster's RESP ports (run by bench/resp_check.sh).

Usage: python3 bench/resp_check.py PORT [PORT ...]

Writes through the first node and reads through the others, in RESP2 and RESP3
(`protocol=3`, which sends `HELLO 3`): SET/GET of bytes, EX/TTL, pipelines
(`transaction=False`: ringkv has no MULTI/EXEC), MSET/MGET, DEL/EXISTS, SET NX and
GET, EXPIRE/PERSIST, INCR/INCRBY/DECRBY (PN-counters), SADD/SREM/SMEMBERS
(OR-sets), INFO, Redis's error texts. Prints one line per protocol and
exits non-zero on the first failed check.
"""

import sys

import redis


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL redis-py {name} {detail}")
        sys.exit(1)


def run(ports, protocol):
    writer = redis.Redis(port=ports[0], protocol=protocol)
    readers = [redis.Redis(port=port, protocol=protocol) for port in ports[1:]] or [writer]
    prefix = f"py{protocol}:"
    check("ping", writer.ping())
    value = bytes(range(256))
    check("set", writer.set(prefix + "bytes", value))
    for reader in readers:
        check("get on another node", reader.get(prefix + "bytes") == value)
    check("get of a missing key", readers[0].get(prefix + "missing") is None)

    check("set ex", writer.set(prefix + "session", "s", ex=100))
    ttl = readers[0].ttl(prefix + "session")
    check("ttl", 99 <= ttl <= 100, ttl)
    check("ttl without expiry", readers[0].ttl(prefix + "bytes") == -1)
    check("ttl of a missing key", readers[0].ttl(prefix + "missing") == -2)

    pipe = writer.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"{prefix}pipe-{i}", i)
    for i in range(100):
        pipe.get(f"{prefix}pipe-{i}")
    out = pipe.execute()
    check("pipeline sets", out[:100] == [True] * 100, out[:100])
    check("pipeline gets", out[100:] == [str(i).encode() for i in range(100)], out[100:])

    check("mset", writer.mset({prefix + "a": 1, prefix + "b": 2}))
    got = readers[0].mget(prefix + "a", prefix + "missing", prefix + "b")
    check("mget", got == [b"1", None, b"2"], got)
    check("exists", readers[0].exists(prefix + "a", prefix + "b", prefix + "missing") == 2)
    check("delete", writer.delete(prefix + "a", prefix + "missing") == 1)
    check("get after delete", readers[0].get(prefix + "a") is None)

    check("set nx on a present key", writer.set(prefix + "b", 3, nx=True) is None)
    check("set get", writer.set(prefix + "b", 4, get=True) == b"2")
    check("expire", writer.expire(prefix + "b", 50))
    check("ttl after expire", 49 <= readers[0].ttl(prefix + "b") <= 50)
    check("persist", writer.persist(prefix + "b"))
    check("ttl after persist", readers[0].ttl(prefix + "b") == -1)

    # Counters and sets are CRDTs (PN-counter, OR-set).
    check("incr", writer.incr(prefix + "counter") == 1)
    check("incrby", writer.incrby(prefix + "counter", 41) == 42)
    check("decrby", writer.decrby(prefix + "counter", 50) == -8)
    pipe = writer.pipeline(transaction=False)
    for _ in range(20):
        pipe.incr(prefix + "counter")
    pipe.execute()
    check("incr pipelined, read elsewhere", readers[0].incrby(prefix + "counter", 0) == 12)
    check("sadd", writer.sadd(prefix + "set", "a", "b", "a") == 2)
    check("sadd on another node", readers[0].sadd(prefix + "set", "b", "c") == 1)
    check("srem", writer.srem(prefix + "set", "a") == 1)
    members = readers[0].smembers(prefix + "set")
    check("smembers", members == {b"b", b"c"}, members)
    try:
        writer.incr(prefix + "bytes")
        check("wrongtype", False)
    except redis.ResponseError as error:
        check("wrongtype", str(error).startswith("WRONGTYPE"), error)

    check("info", writer.info("server").get("redis_version") is not None)
    try:
        writer.execute_command("GET")
        check("arity error", False)
    except redis.ResponseError as error:
        check("arity error", "wrong number of arguments for 'get' command" in str(error), error)
    try:
        writer.set(prefix + "k", "v", ex=0)
        check("expire time error", False)
    except redis.ResponseError as error:
        check("expire time error", "invalid expire time in 'set' command" in str(error), error)
    print(f"ok   redis-py {redis.__version__}, RESP{protocol}")


def main():
    ports = [int(port) for port in sys.argv[1:]]
    if not ports:
        print(__doc__)
        sys.exit(2)
    for protocol in (2, 3):
        run(ports, protocol)


if __name__ == "__main__":
    main()
