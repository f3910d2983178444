#!/usr/bin/env python3
"""Redis's cost of each room script, in instructions (valgrind callgrind), not seconds.

    queue-core/benches/script_cost.py [DIR ...]

Redis runs every room's scripts on one thread, so the instructions a script costs there bound
what one Redis (or one Cluster shard) serves: joins, polls (a gateway coalesces the polls that
arrive together into one status call) and touches. Instruction counts repeat to within a
fraction of a percent run to run, whatever else the machine is doing, so two versions of the
scripts compare exactly where timings on this shared machine drift by 15 %.

Each DIR holds join.lua, status.lua and touch.lua as Redis gets them (prelude included), as
`cargo run -p queue-core --example scripts -- DIR` writes them; with no DIR, this checkout's.
Two DIRs (say, the example run in a worktree of an older commit, then in this one) add a
ratio column.

Starts its own redis-server (hz 1: less timer work in the counts) under callgrind on a free port, fills a paused room and an open one (no free pass) with 2,000 waiting
tickets each through join.lua, then for each measured call zeroes the counters, sends 200 calls
(pipelined) and dumps. `EVALSHA return {'ok'}` with the same 15 keys is the floor every
script call pays (the reference in the same run); `ZRANK` and `PING`, pipelined the same way,
what a status poll's plain read (`reads.rs`) and any command cost. SCRIPT_COST_KEEP=1 keeps the dumps for
callgrind_annotate. Needs valgrind (callgrind_control) and redis-server.
"""
import glob
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time

CALLS = 200
KEYS = "cfg seq waiting seen admitted tickets users gone stats rate draw batches bexp batchn revoked".split()
CFG = {
    "protect": '["/book/"]', "target": "/", "batch_size": "1000", "tick_interval_ms": "100",
    "free_pass": "0", "max_active": "0", "session_ttl_s": "3600", "idle_timeout_s": "300",
    "queue_method": "fifo", "opens_at_ms": "0", "paused": "1",
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    """A minimal RESP client: pipelining many calls is the point."""

    def __init__(self, port):
        for _ in range(600):
            try:
                self.sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"redis-server under valgrind did not listen on {port}")
        self.file = self.sock.makefile("rb")

    @staticmethod
    def encode(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out

    def read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def pipeline(self, requests):
        self.sock.sendall(b"".join(requests))
        return [self.read() for _ in requests]

    def command(self, *args):
        return self.pipeline([self.encode(*args)])[0]


def measure(lua_dir):
    out = tempfile.mkdtemp(prefix="script-cost-")
    port = free_port()
    vg = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
         "redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--hz", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = Redis(port)
        sha = {name: r.command("SCRIPT", "LOAD", open(f"{lua_dir}/{name}.lua").read()).decode()
               for name in ("join", "status", "touch")}
        sha["floor"] = r.command("SCRIPT", "LOAD", "return {'ok'}").decode()
        keys = [f"wr:{{r}}:{k}" for k in KEYS]
        r.command("HSET", keys[0], *[x for kv in CFG.items() for x in kv])
        # A second room, open, without a free pass: what most joins of an on-sale meet.
        r.command("HSET", "wr:{o}:cfg", *[x for kv in {**CFG, "paused": "0"}.items() for x in kv])

        def call(name, *args, room="r"):
            room_keys = [f"wr:{{{room}}}:{k}" for k in KEYS]
            return Redis.encode("EVALSHA", sha[name], len(room_keys), *room_keys, f"wr:{{{room}}}:events", room, *args)

        def owner():
            return os.urandom(16).hex()

        for room in ("r", "o"):
            r.pipeline([call("join", owner(), os.urandom(8).hex(), room=room) for _ in range(2000)])
        tickets = [t.decode() for t in r.command("ZRANGE", keys[2], 0, -1)]
        assert len(tickets) == 2000, len(tickets)
        rng = random.Random(1)
        again = owner()
        cases = [
            ("EVALSHA return {'ok'} (floor)", [call("floor")] * CALLS),
            ("status, 1 ticket", [call("status", rng.choice(tickets)) for _ in range(CALLS)]),
            ("status, 8 tickets", [call("status", *rng.sample(tickets, 8)) for _ in range(CALLS)]),
            ("touch, 8 tickets", [call("touch", *rng.sample(tickets, 8)) for _ in range(CALLS)]),
            ("join, new owner", [call("join", owner(), os.urandom(8).hex()) for _ in range(CALLS)]),
            ("join, new owner, open room", [call("join", owner(), os.urandom(8).hex(), room="o") for _ in range(CALLS)]),
            ("join, same owner again", [call("join", again, os.urandom(8).hex())] * CALLS),
            # What a status poll costs Redis instead (reads.rs: one ZRANK per waiting ticket,
            # pipelined), and the floor of any command.
            ("ZRANK (a poll's plain read)", [Redis.encode("ZRANK", keys[2], rng.choice(tickets)) for _ in range(CALLS)]),
            ("PING (a command's floor)", [Redis.encode("PING")] * CALLS),
        ]
        results = []
        for i, (label, requests) in enumerate(cases, start=1):
            subprocess.run(["callgrind_control", "-z", str(vg.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for reply in r.pipeline(requests):
                plain = not label.startswith(("EVALSHA", "status", "touch", "join"))
                assert plain or (isinstance(reply, list) and reply[0] == b"ok"), (label, reply)
                assert not plain or isinstance(reply, (int, bytes)), (label, reply)
            subprocess.run(["callgrind_control", "-d", str(vg.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dump = f"{out}/cg.out.{i}"
            for _ in range(100):
                if os.path.exists(dump) and re.search(r"^totals: ", open(dump).read(), re.M):
                    break
                time.sleep(0.1)
            total = int(re.search(r"^totals: (\d+)", open(dump).read(), re.M).group(1))
            results.append((label, total / len(requests)))
        return results
    finally:
        vg.terminate()
        vg.wait()
        if os.environ.get("SCRIPT_COST_KEEP"):
            print(f"callgrind dumps of {lua_dir} kept in {out} (cg.out.N: the Nth row)", file=sys.stderr)
        else:
            for f in glob.glob(f"{out}/*"):
                os.remove(f)
            os.rmdir(out)


def main():
    dirs = sys.argv[1:]
    if not dirs:
        here = tempfile.mkdtemp(prefix="scripts-")
        subprocess.run(["cargo", "run", "--release", "-q", "-p", "queue-core", "--example", "scripts", "--", here],
                       check=True)
        dirs = [here]
    runs = [measure(d) for d in dirs]
    width = max([16] + [len(d) + 2 for d in dirs])
    head = f"{'Redis instructions per call':32}" + "".join(f"{d:>{width}}" for d in dirs)
    if len(dirs) == 2:
        head += f"{'ratio':>8}"
    print(head)
    for row in range(len(runs[0])):
        label = runs[0][row][0]
        values = [run[row][1] for run in runs]
        line = f"{label:32}" + "".join(f"{v:{width},.0f}" for v in values)
        if len(dirs) == 2:
            line += f"{values[1] / values[0]:8.2f}"
        print(line)


if __name__ == "__main__":
    main()
