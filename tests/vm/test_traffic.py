"""Whether a guest is in use (summoner.vm.traffic), on what real guests showed."""

from __future__ import annotations

from summoner.vm.traffic import parse_proc_net_tcp, parse_usernet, traffic_seen

# Captured from a real hello guest (qemu:///system, QEMU 7.2, user networking,
# forward 127.0.0.184:8080): `info usernet` and the host's /proc/net/tcp (the
# lines of that address, plus the table's first two), idle 15 s after boot,
# with one client connection open, and 0.3 s after that connection finished
# (request sent, response read to EOF, closed).
USERNET_IDLE = """Hub -1 (sn0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[TIME_WAIT]     15     127.0.0.184  8080       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]  11     127.0.0.184  8080       10.0.2.15  8080     0     0
"""
USERNET_OPEN = """Hub -1 (sn0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[ESTABLISHED]   19     127.0.0.184  8080       10.0.2.15  8080     0     0
  TCP[TIME_WAIT]     15     127.0.0.184  8080       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]  11     127.0.0.184  8080       10.0.2.15  8080     0     0
"""
USERNET_CLOSED = """Hub -1 (sn0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  11     127.0.0.184  8080       10.0.2.15  8080     0     0
"""
_HEAD = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
         "   0: B800007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 64055        0 236870 1 "
         "0000000067697d9d 100 0 0 10 0\n"
         "   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1594 1 "
         "000000005e885da1 100 0 0 10 0\n")
PROC_IDLE = _HEAD + ("  20: B800007F:1F90 0100007F:D89A 06 00000000:00000000 03:00001193 00000000     0        0 0 3 "
                     "00000000f365d9be\n")
PROC_OPEN = _HEAD + (
    "  13: 0100007F:98EA B800007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 236383 2 "
    "00000000c2c93729 20 0 0 10 -1\n"
    "  18: B800007F:1F90 0100007F:98EA 01 00000000:00000000 00:00000000 00000000 64055        0 236384 1 "
    "00000000198abaab 20 0 0 10 -1\n"
    "  22: B800007F:1F90 0100007F:D89A 06 00000000:00000000 03:00001174 00000000     0        0 0 3 "
    "00000000f365d9be\n")
PROC_CLOSED = _HEAD + (
    "  17: B800007F:1F90 0100007F:98EA 06 00000000:00000000 03:00001751 00000000     0        0 0 3 "
    "000000003380a5ae\n"
    "  21: B800007F:1F90 0100007F:D89A 06 00000000:00000000 03:00001155 00000000     0        0 0 3 "
    "00000000f365d9be\n")
FORWARD = ("127.0.0.184", 8080)


def test_parse_usernet_on_real_output():
    assert parse_usernet(USERNET_OPEN) == ("TCP[ESTABLISHED] 19 127.0.0.184 8080 10.0.2.15 8080 0 0",
                                           "TCP[TIME_WAIT] 15 127.0.0.184 8080 10.0.2.15 8080 0 0")
    assert parse_usernet(USERNET_IDLE) == ("TCP[TIME_WAIT] 15 127.0.0.184 8080 10.0.2.15 8080 0 0",)
    # slirp drops a finished connection at once: its table cannot show one
    # that came and went between two looks (the host's table can, below)
    assert parse_usernet(USERNET_CLOSED) == ()


def test_parse_proc_net_tcp_on_real_output():
    assert parse_proc_net_tcp(PROC_OPEN, {FORWARD}) == {FORWARD: (
        "TCP[ESTABLISHED] host 127.0.0.184:8080 127.0.0.1:39146",   # QEMU's end
        "TCP[ESTABLISHED] host 127.0.0.1:39146 127.0.0.184:8080",   # the client's end
        "TCP[TIME_WAIT] host 127.0.0.184:8080 127.0.0.1:55450",     # an older one
    )}  # QEMU's listener and the other address's listener are left out
    assert parse_proc_net_tcp(PROC_CLOSED, {FORWARD}) == {FORWARD: (
        "TCP[TIME_WAIT] host 127.0.0.184:8080 127.0.0.1:39146", "TCP[TIME_WAIT] host 127.0.0.184:8080 127.0.0.1:55450")}
    assert parse_proc_net_tcp(PROC_OPEN, {("127.0.0.185", 8080), ("127.0.0.184", 8081)}) == {}


def test_user_mode_tokens_of_real_captures_show_use_and_idleness():
    """What the reaper concludes from consecutive looks at the captures above."""
    def token(usernet, proc):
        return tuple(sorted(parse_usernet(usernet) + parse_proc_net_tcp(proc, {FORWARD}).get(FORWARD, ())))
    idle, open_, closed = token(USERNET_IDLE, PROC_IDLE), token(USERNET_OPEN, PROC_OPEN), \
        token(USERNET_CLOSED, PROC_CLOSED)
    assert not traffic_seen("user", idle, idle)
    assert traffic_seen("user", idle, open_)       # a connection is open
    assert traffic_seen("user", open_, open_)      # still open: still in use
    assert traffic_seen("user", idle, closed)      # one came and went between the looks
    assert not traffic_seen("user", closed, closed)


def test_traffic_seen():
    est = "TCP[ESTABLISHED] 18 127.0.0.10 8080 10.0.2.15 8080 0 0"
    tw = "TCP[TIME_WAIT] 18 127.0.0.10 8080 10.0.2.15 8080 0 0"
    tw2 = "TCP[TIME_WAIT] 19 127.0.0.10 8080 10.0.2.15 8080 0 0"
    assert not traffic_seen("user", None, (est,))
    assert traffic_seen("user", (), (est,))
    assert traffic_seen("user", (est,), (est,))          # open connection: in use
    assert not traffic_seen("user", (tw,), (tw,))        # lingering closed one: not use
    assert not traffic_seen("user", (tw,), ())
    assert traffic_seen("user", (tw,), (tw, tw2))        # a new one came and went
    assert traffic_seen("bridge", (1, 2, 3, 4), (1, 2, 3, 5))
    assert not traffic_seen("bridge", (1, 2, 3, 4), (1, 2, 3, 4))
