"""The flow table as pure code: buckets, overflow chains, pairs, generations, aging, sharing."""

import random
import socket

import pytest

from flows.layout import BUCKET_SIZE, Action, DropReason, Flag, make_key
from flows.table import FlowSpec, FlowTable, TableFull


def ip(s: str) -> bytes:
    return socket.inet_aton(s)


def key(n: int, nh: int = 3) -> bytes:
    return make_key(nh, ip("10.1.1.3"), ip("10.%d.%d.4" % (n >> 16, (n >> 8) & 0xFF)), 6, 1024 + (n & 0xFF), 80)


def rkey(n: int) -> bytes:
    return make_key(4, ip("10.%d.%d.4" % (n >> 16, (n >> 8) & 0xFF)), ip("10.1.1.3"), 6, 80, 1024 + (n & 0xFF))


FWD = FlowSpec(Action.FORWARD, vrf=1, dvrf=1, vif=3)


def same_bucket_keys(table: FlowTable, count: int) -> list[bytes]:
    """Keys that all hash to the bucket of key(0)."""
    want = table._bucket(key(0))
    out, n = [], 0
    while len(out) < count:
        if table._bucket(key(n)) == want:
            out.append(key(n))
        n += 1
    return out


def test_lookup_miss_then_hit_pair():
    t = FlowTable.in_memory(64)
    assert t.lookup(key(1)) == -1
    fi, ri = t.add_pair(key(1), FWD, rkey(1), FWD, now=1)
    assert t.lookup(key(1)) == fi
    assert t.lookup(rkey(1)) == ri
    f, r = t.read(fi), t.read(ri)
    assert f.rindex == ri and r.rindex == fi
    assert f.flags & Flag.RFLOW_VALID and r.reverse
    assert not f.reverse
    assert (f.src, f.dst, f.sport, f.dport, f.proto) == (ip("10.1.1.3"), ip("10.0.0.4"), 1025, 80, 6)
    assert t.active == 2


def test_keys_differ_by_nexthop():
    t = FlowTable.in_memory(64)
    t.add_single(key(1, nh=3), FWD)
    assert t.lookup(key(1, nh=5)) == -1


def test_collision_chain_goes_to_overflow_and_back():
    t = FlowTable.in_memory(64, overflow=8)
    keys = same_bucket_keys(t, BUCKET_SIZE + 3)
    idx = [t.add_single(k, FWD) for k in keys]
    assert all(i < t.entries for i in idx[:BUCKET_SIZE])
    assert all(i >= t.entries for i in idx[BUCKET_SIZE:])
    for k, i in zip(keys, idx, strict=True):
        assert t.lookup(k) == i
    # remove the middle of the overflow chain: the rest stays reachable
    t.delete(idx[BUCKET_SIZE + 1])
    assert t.lookup(keys[BUCKET_SIZE + 1]) == -1
    for k, i in zip(keys, idx, strict=True):
        if i != idx[BUCKET_SIZE + 1]:
            assert t.lookup(k) == i
    # the freed overflow slot is used again
    more = same_bucket_keys(t, BUCKET_SIZE + 4)[-1]
    assert t.add_single(more, FWD) == idx[BUCKET_SIZE + 1]


def test_full_table_raises_and_leaves_nothing_half_made():
    t = FlowTable.in_memory(4, overflow=1)
    keys = same_bucket_keys(t, 5)
    for k in keys:
        t.add_single(k, FWD)
    assert t.active == 5
    with pytest.raises(TableFull):
        t.add_single(key(99_999), FWD)
    with pytest.raises(TableFull):
        t.add_pair(key(99_998), FWD, rkey(99_998), FWD)
    assert t.active == 5
    assert t.lookup(key(99_998)) == -1 and t.lookup(key(99_999)) == -1


def test_pair_that_does_not_fit_is_rolled_back():
    t = FlowTable.in_memory(4, overflow=0)  # one bucket: every key lands in it
    for n in range(3):
        t.add_single(key(n), FWD)
    with pytest.raises(TableFull):
        t.add_pair(key(10), FWD, rkey(10), FWD)  # the forward half fits, the reverse cannot
    assert t.active == 3
    assert t.lookup(key(10)) == -1
    assert t.add_single(key(11), FWD) >= 0  # the slot the forward half took is free again


def test_delete_removes_both_halves_and_slot_reuse_bumps_generation():
    t = FlowTable.in_memory(64)
    fi, ri = t.add_pair(key(1), FWD, rkey(1), FWD)
    g = t.generation(fi)
    assert sorted(t.delete(ri)) == sorted([fi, ri])
    assert t.lookup(key(1)) == -1 and t.lookup(rkey(1)) == -1
    assert t.active == 0
    fi2, _ = t.add_pair(key(1), FWD, rkey(1), FWD)
    assert fi2 == fi
    assert t.generation(fi2) == (g + 1) & 0xFF


def test_stale_key_never_matches_after_reuse():
    t = FlowTable.in_memory(4, overflow=0)
    keys = same_bucket_keys(t, 2)
    i = t.add_single(keys[0], FWD)
    t.delete(i)
    j = t.add_single(keys[1], FWD)
    assert j == i
    assert t.lookup(keys[0]) == -1
    assert t.lookup(keys[1]) == j


def test_counters_and_tcp_flags():
    t = FlowTable.in_memory(64)
    fi, _ = t.add_pair(key(1), FWD, rkey(1), FWD, now=10)
    t.hit(fi, 60, now=20, tcp_flags=0x02)
    t.hit(fi, 40, now=30, tcp_flags=0x10)
    e = t.read(fi)
    assert (e.packets, e.bytes, e.last_ns, e.tcp_flags) == (2, 100, 30, 0x12)


def test_a_pair_is_as_idle_as_its_busier_half():
    # what aging reads (the table's records: the dataplane's aging walk removes a pair when both
    # halves are idle)
    t = FlowTable.in_memory(64)
    old, old_r = t.add_pair(key(1), FWD, rkey(1), FWD, now=0)
    busy, busy_r = t.add_pair(key(2), FWD, rkey(2), FWD, now=0)
    t.hit(busy_r, 10, now=150)  # reverse half in use keeps the pair
    assert t.pair_last_used(old) == t.pair_last_used(old_r) == 0
    assert t.pair_last_used(busy) == t.pair_last_used(busy_r) == 150
    assert t.is_reverse(busy_r) and not t.is_reverse(busy)


def test_drop_flow_records_reason():
    t = FlowTable.in_memory(64)
    i = t.add_single(key(1), FlowSpec(Action.DROP, drop_reason=DropReason.NO_ROUTE))
    e = t.read(i)
    assert e.action == Action.DROP and e.drop_reason == DropReason.NO_ROUTE
    assert not e.flags & Flag.RFLOW_VALID


def test_shared_file_seen_by_read_only_reader(tmp_path):
    path = str(tmp_path / "flows.shm")
    w = FlowTable.create_file(path, entries=256, overflow=16)
    r = FlowTable.open_readonly(path)
    assert (r.entries, r.overflow) == (256, 16)
    fi, ri = w.add_pair(key(1), FWD, rkey(1), FWD)
    w.hit(fi, 99, now=5)
    assert {e.index for e in r.dump()} == {fi, ri}
    assert r.read(fi).bytes == 99
    w.delete(fi)
    assert r.dump() == []
    with pytest.raises(TypeError):
        r.buf[0] = 1  # mapped read-only
    r.close()
    w.close()


def test_default_table_size():
    from flows.layout import RECORD_SIZE
    from flows.table import DEFAULT_ENTRIES, DEFAULT_OVERFLOW, table_size

    assert RECORD_SIZE == 128
    assert DEFAULT_ENTRIES == 524_288
    assert table_size(DEFAULT_ENTRIES, DEFAULT_OVERFLOW) < 81 * 1024 * 1024


def _record_links(t: FlowTable) -> tuple[list[int], list[int]]:
    # the overflow chains as the records hold them (what readers such as flow -l walk)
    from flows.layout import BUCKET_SIZE, HEADER_SIZE, OFF_OFLOW_NEXT, RECORD_SIZE, U32

    def link(i: int) -> int:
        return U32.unpack_from(t.buf, HEADER_SIZE + i * RECORD_SIZE + OFF_OFLOW_NEXT)[0]

    return [link(b * BUCKET_SIZE) for b in range(t.nbuckets)], [link(i) for i in range(t.entries, t.capacity)]


def _check_back_links(t: FlowTable) -> None:
    # each overflow entry in a chain knows the entry before it (0: first) and its bucket
    for b, nxt in enumerate(t._head):
        prev = 0
        while nxt:
            o = nxt - 1 - t.entries
            assert t._prev[o] == prev and t._bucket_of[o] == b
            prev, nxt = nxt, t._next[o]


def test_tag_index_agrees_with_the_records_through_churn():
    # random set-ups and removals in a small table, so that buckets fill and overflow chains form
    # and break: the writer's tag index and its copy of the overflow chains must find exactly what
    # a scan of the records finds, and a table opened afresh over the same memory must rebuild both
    t = FlowTable.in_memory(64, 32)
    rnd = random.Random(7)
    live: dict[bytes, int] = {}
    most_in_overflow = 0
    for step in range(3000):
        if live and (rnd.random() < 0.45 or t.active >= t.capacity - 2):
            k = rnd.choice(sorted(live))
            removed = t.delete(live[k])
            assert removed
            for kk in [kk for kk, i in live.items() if i in removed]:
                del live[kk]
        else:
            n = rnd.randrange(100000)
            fk, rk = key(n), rkey(n)
            if fk in live or rk in live:
                continue
            try:
                fi, ri = t.add_pair(fk, FWD, rk, FWD)
            except TableFull:
                continue
            live[fk], live[rk] = fi, ri
        if step % 100 == 0:
            for n in range(0, 100000, 997):  # some absent keys too
                assert t.lookup(key(n)) == t._scan(key(n)) == live.get(key(n), -1)
            heads, links = _record_links(t)
            assert heads == list(t._head) and links == list(t._next)
            reader = FlowTable(t.buf, writable=False)  # the aging walk, from the tags and from the records
            assert t.active_between(0, t.capacity) == reader.active_between(0, t.capacity) == list(t.active_indices())
            assert t.active_between(10, 50) == [i for i in t.active_indices() if 10 <= i < 50]
            _check_back_links(t)
            most_in_overflow = max(most_in_overflow, t.overflow - len(t._free_overflow))
    assert most_in_overflow > 8  # the overflow area was really used
    for k, i in live.items():
        assert t.lookup(k) == t._scan(k) == i
    again = FlowTable(t.buf, writable=True)
    assert again._tags == t._tags and again.active == t.active
    assert again._head == t._head and again._next == t._next
    assert again._prev == t._prev and [again._bucket_of[i - t.entries] for i in live.values() if i >= t.entries] == [
        t._bucket_of[i - t.entries] for i in live.values() if i >= t.entries
    ]


@pytest.mark.parametrize("writers", [2, 3, 4])
def test_writers_share_one_table_each_in_its_own_entries(writers):
    # several writers (the dataplane's workers) over one buffer, with random set-ups and removals in
    # a small table so that buckets fill and every writer's overflow chains form and break: each
    # writes only entries i with i % writers == its number, finds only its own flows, and a reader
    # (flow -l) finds everyone's by the records, chains included
    buf = FlowTable.new_buffer(64, 48, writers=writers)
    ts = [FlowTable(buf, writable=True, writer=w) for w in range(writers)]
    rnd = random.Random(writers)
    live: list[dict[bytes, int]] = [{} for _ in ts]
    for step in range(3000):
        w = rnd.randrange(writers)
        t, mine = ts[w], live[w]
        if mine and rnd.random() < 0.4:
            k = rnd.choice(sorted(mine))
            removed = t.delete(mine[k])
            for kk in [kk for kk, i in mine.items() if i in removed]:
                del mine[kk]
        else:
            n = rnd.randrange(100000) * writers + w  # the flows of one writer are its own
            if key(n) in mine:
                continue
            try:
                fi, ri = t.add_pair(key(n), FWD, rkey(n), FWD)
            except TableFull:
                continue
            assert fi % writers == ri % writers == w
            mine[key(n)], mine[rkey(n)] = fi, ri
        if step % 150 == 0:
            reader = FlowTable(buf, writable=False)
            everyone = {k: i for m in live for k, i in m.items()}
            assert sorted(reader.active_indices()) == sorted(everyone.values())
            for k, i in everyone.items():
                assert reader.lookup(k) == i
            for v, (tv, m) in enumerate(zip(ts, live, strict=True)):
                assert tv.active == len(m)
                assert tv.active_between(0, tv.capacity) == sorted(m.values())
                for k, i in everyone.items():
                    assert tv.lookup(k) == (i if k in m else -1), (v, i)
                _check_back_links(tv)
    assert sum(t.overflow // writers - len(t._free_overflow) for t in ts) > 8  # the overflow area was really used
    # a writer opened again over the same memory (a worker restarted) starts empty, the others untouched
    from flows.table import clear_writer

    assert clear_writer(buf, 1) == len(live[1])
    again = FlowTable(buf, writable=True, writer=1)
    assert again.active == 0 and all(again.lookup(k) == -1 for k in live[1])
    reader = FlowTable(buf, writable=False)
    assert sorted(reader.active_indices()) == sorted(i for m in (live[0], *live[2:]) for i in m.values())
    for m in (live[0], *live[2:]):
        for k, i in m.items():
            assert reader.lookup(k) == i
    n = 7 * writers + 1
    fi, _ = again.add_pair(key(n), FWD, rkey(n), FWD)
    assert fi % writers == 1 and reader.lookup(key(n)) == fi


def test_a_table_refuses_a_writer_it_was_not_made_for():
    from flows.table import TableFormatError

    buf = FlowTable.new_buffer(64, 16, writers=2)
    with pytest.raises(TableFormatError):
        FlowTable(buf, writable=True, writer=2)
    with pytest.raises(ValueError):
        FlowTable.new_buffer(64, 16, writers=5)


def test_a_reader_walks_every_writers_entries_a_page_at_a_time():
    """The introspect's flow walk: active_from pages through what every writer holds, in index
    order, and find looks any writer's entry up (a writer's own lookup sees only its own)."""
    buf = FlowTable.new_buffer(4096, 512, writers=2)
    w0, w1 = FlowTable(buf, writable=True, writer=0), FlowTable(buf, writable=True, writer=1)
    keys = [make_key(3, bytes([10, 0, i >> 8, i & 255]), b"\x0a\x00\x00\x01", 17, i, 80) for i in range(700)]
    spec = FlowSpec(Action.FORWARD, vrf=1, dvrf=1, src_nh=3, vif=3)
    made = sorted((w0 if i % 2 else w1).add_single(k, spec, 1) for i, k in enumerate(keys))
    walked, start = [], 0
    while True:
        page = w0.active_from(start, 101)
        walked += page[:100]
        if len(page) <= 100:
            break
        start = page[100]
    assert walked == made == sorted(w0.every_active())
    assert all(w0.find(k) >= 0 for k in keys) and w0.find(make_key(3, b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 6, 1, 2)) == -1
    assert w0.active_from(len(buf), 10) == [] and w0.active_from(-5, 1) == made[:1]
