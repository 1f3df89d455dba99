"""
The benchmark cannot rot: ``python -m relayd.bench`` runs end to end at a tiny size, and its parts do their sums right.

Nothing here judges speed: the end-to-end run checks that every row is
there with a sane value, never how fast anything was.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys

import pytest

from relayd.bench import load, report
from relayd.bench.cli import DEFAULT, options
from relayd.bench.procs import ROOT

TINY = ["--steps", "20,40", "--idle-connections", "20", "--idle-seconds", "1.5", "--ping-interval", "1",
        "--seconds", "0.6", "--warmup", "0.2", "--rounds", "1", "--in-flight", "4", "--receivers", "20",
        "--senders", "4", "--pool", "4", "--rates", "50,100", "--batch-size", "5", "--broadcast-receivers", "20",
        "--broadcast-senders", "2", "--soak-seconds", "4", "--soak-clients", "10", "--soak-rate", "40",
        "--soak-interval", "1", "--open-timeout", "30", "--time-limit", "300", "--quiet-wait", "0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run of every scenario, soak included: (the JSON document, stdout, the output directory)."""
    pytest.importorskip("aiohttp")
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "relayd.bench", *TINY, "--only", ",".join((*DEFAULT, "soak")),
               "--json", str(out / "bench.json"), "--plot", str(out / "latency.png"), "--markdown"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "bench.json").read_text()), done.stdout, out


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.integration
def test_every_row_is_there_with_a_sane_value(tiny_run):
    document, _, _ = tiny_run
    rows = {row["key"]: row for row in document["rows"]}
    expected = {"memory_20", "memory_40", "idle_cpu", "handshakes", "post_max", "batch", "broadcast",
                "soak_open_files", "soak_rss", "soak_defects"}
    expected |= {f"rate_{rate}_{what}" for rate in (50, 100) for what in ("cpu", "p50", "p99", "p999", "max")}
    expected |= {f"redis{n}_{what}" for n in (1, 2) for what in ("keep_pace", "p99", "throughput")}
    expected.add("store_throughput")
    assert expected <= set(rows), sorted(expected - set(rows))
    for key, row in rows.items():
        if row["note"].startswith("skipped"):
            assert key.startswith(("store", "redis")), key
            continue
        assert number(row["relayd"]) and row["relayd"] >= 0, row
        if key == "soak_defects":
            continue
        assert number(row["baseline"]) and row["baseline"] >= 0, row
        if row["baseline"] > 0:
            assert row["ratio"] == pytest.approx(row["relayd"] / row["baseline"]), row
        else:
            assert row["unit"] == "%" and row["ratio"] is None, row  # CPU below one clock tick
    for key in ("memory_20", "memory_40", "handshakes", "post_max", "batch", "broadcast", "rate_50_p50"):
        assert rows[key]["relayd"] > 0 and rows[key]["baseline"] > 0, rows[key]
    assert rows["post_max"]["target"] == [">=", 1.5] and rows["post_max"]["ok"] in (True, False)
    if shutil.which("redis-server"):
        assert not rows["redis2_keep_pace"]["note"], rows["redis2_keep_pace"]


@pytest.mark.integration
def test_raw_results_hold_what_the_rows_summarise(tiny_run):
    document, _, _ = tiny_run
    results = document["results"]
    for kind in ("relayd", "aiohttp"):
        assert results["post_max_warm_up"][kind]["delivered_per_s"] > 0  # each server saturated once, uncounted
        assert [point["held"] for point in results["memory"][kind]] == [20, 40]
        assert results["idle"][kind]["pings_per_s"] > 0, results["idle"][kind]
        for point in results["rates"][kind]:
            assert point["samples"] > 0 and point["undelivered"] == 0, point
            assert point["p50"] <= point["p99"] <= point["p999"] <= point["max"], point
    beside = [window["delivered_per_s"] for window in results["batch_aiohttp_beside"]]
    assert len(beside) == len(results["batch"]) == 1 and beside[0] > 0  # one aiohttp window beside each batch window
    assert {row["key"]: row for row in document["rows"]}["batch"]["baseline"] == beside[0]
    soak = results["soak"]
    assert soak["connections"] > 10 and soak["acked"] > 0 and len(soak["series"]) >= 3, soak
    assert soak["delivered"] == soak["acked"] and soak["duplicates"] == soak["gaps"] == 0, soak
    assert document["meta"]["machine"]["cores"] >= 1 and document["meta"]["seconds"] > 0


@pytest.mark.integration
def test_prints_progress_the_table_and_plots(tiny_run):
    _, stdout, out = tiny_run
    assert "post max: relayd:" in stdout and "post max: aiohttp:" in stdout
    assert "post max: each server warmed up" in stdout
    assert "| figure | relayd |" in stdout and "user memory per idle connection, 20 held" in stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in stdout
    else:
        assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "latency-soak.png").read_bytes()[:4] == b"\x89PNG"


def test_quick_sizes_give_way_to_explicit_ones():
    quick = options(["--quick", "--receivers", "7", "--only", "post"])
    assert quick.receivers == 7 and quick.steps == [500, 2000] and quick.wanted == {"post"}
    assert options([]).steps == [1000, 10000, 19000] and "soak" not in options([]).wanted
    with pytest.raises(SystemExit):
        options(["--only", "nonsense"])


def test_a_row_judges_its_ratio_or_its_own_value():
    faster = report.Row("x", "x", "/s", 300.0, 200.0, target=(">=", 1.5))
    assert faster.ratio == 1.5 and faster.ok is True and faster.target_text() == "≥ 1.5×"
    assert report.Row("x", "x", "/s", 299.0, 200.0, target=(">=", 1.5)).ok is False
    stall = report.Row("x", "x", "ms", 51.0, 3.0, target=("<=", 50.0, "abs"))
    assert stall.ok is False and stall.target_text() == "≤ 50.00 ms"
    assert report.Row("x", "x", "ms", 49.0, 100.0, target=("<=", 50.0, "abs")).ok is True
    assert report.Row("x", "x", "/s", 1.0, None).ratio is None
    assert report.skipped("s", "s", "/s", "why").ok is None


def test_rounds_of_a_fixed_rate_merge_into_medians_the_worst_max_and_sums():
    from relayd.bench.scenarios import merge_rounds

    def figures(cpu, p99, worst, late):
        return {"rate": 2000.0, "cpu_percent": cpu, "achieved_per_s": 1999.0, "p50": 0.2, "p99": p99, "p999": p99 * 2,
                "max": worst, "samples": 10, "late": late, "undelivered": 0, "refused": 0, "posters_lost": 0}

    merged = merge_rounds([figures(20.0, 0.5, 3.0, 0), figures(30.0, 0.7, 60.0, 2), figures(22.0, 0.6, 4.0, 1)])
    assert merged["cpu_percent"] == 22.0 and merged["p99"] == 0.6 and merged["p999"] == 1.2
    assert merged["max"] == 60.0 and merged["late"] == 3 and merged["samples"] == 30
    assert merged["rate"] == 2000.0 and len(merged["rounds"]) == 3


def test_rounds_of_a_backend_merge_into_medians_the_worst_pace_and_sums():
    from relayd.bench.scenarios import merge_backend_rounds

    def figures(delivered, acked, p99, worst, refused):
        return {"acked_per_s": acked, "delivered_per_s": delivered, "posts_per_s": acked, "cpu_us_per_delivery": 1e6 / delivered,
                "p50": 1.0, "p99": p99, "p999": p99 * 2, "max": worst, "samples": 100, "refused": refused,
                "undelivered_after_drain": 0, "posters_lost": 0, "keep_pace": round(delivered / acked, 3)}

    merged = merge_backend_rounds([figures(9000.0, 9000.0, 5.0, 8.0, 0), figures(7000.0, 8000.0, 9.0, 30.0, 4),
                                   figures(8000.0, 8000.0, 6.0, 9.0, 1)])
    assert merged["delivered_per_s"] == 8000.0 and merged["acked_per_s"] == 8000.0 and merged["p99"] == 6.0
    assert merged["cpu_us_per_delivery"] == 125.0 and merged["max"] == 30.0
    assert merged["refused"] == 5 and merged["samples"] == 300 and len(merged["rounds"]) == 3
    assert merged["pace"] == {"delivered_per_s": 7000.0, "acked_per_s": 8000.0, "keep_pace": 0.875}


def test_percentiles_are_nearest_rank():
    summary = report.latency_summary(list(range(1, 1001)))
    assert (summary["p50"], summary["p99"], summary["p999"], summary["max"]) == (0.5, 0.99, 0.999, 1.0)
    assert report.latency_summary([])["p99"] is None


def test_tables_and_the_doc_markers(tmp_path):
    rows = [report.Row("a", "POST max", "/s", 3000.0, 2000.0, target=(">=", 1.5))]
    assert "1.50×" in report.text_table(rows) and "✓" in report.text_table(rows)
    assert report.markdown_table(rows).splitlines()[2].startswith("| POST max | 3,000/s | 2,000/s | 1.50× |")
    doc = tmp_path / "perf.md"
    doc.write_text(f"intro\n{report.MARK.format('table')}\nold\n{report.END_MARK.format('table')}\nafter\n")
    assert report.update_doc(doc, {"table": report.markdown_table(rows), "soak": "x"}) == ["table"]
    text = doc.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("after\n") and "3,000/s" in text
    (tmp_path / "plain.md").write_text("no markers")
    assert report.update_doc(tmp_path / "plain.md", {"table": "x"}) == []


def test_the_memory_table_shows_the_marginal_cost():
    point = {"base_kb": 1000}
    memory = {kind: [{**point, "held": 1000, "rss_kb": 11000, "kib_per_connection": 10.0},
                     {**point, "held": 3000, "rss_kb": 41000, "kib_per_connection": 13.3}] for kind in ("relayd", "aiohttp")}
    lines = report.memory_table(memory).splitlines()
    assert lines[2].startswith("| 1,000 | 10.7 MiB | 10.0 KiB | 10.0 KiB |")
    assert lines[3].startswith("| 3,000 | 40.0 MiB | 13.3 KiB | 15.0 KiB |")


class FakeTransport:
    """Collects writes; enough transport for the protocols' parsing."""

    def __init__(self):
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server frame."""
    if len(payload) < 126:
        return bytes([0x80 | opcode, len(payload)]) + payload
    return bytes([0x80 | opcode, 126]) + len(payload).to_bytes(2, "big") + payload


def test_the_websocket_client_walks_frames_split_anywhere():
    async def scenario():
        sink = load.Sink()
        client = load.WsClient("a", sink, welcome=True)
        transport = FakeTransport()
        client.connection_made(transport)
        assert transport.written.startswith(b"GET /ws?id=a HTTP/1.1\r\n")
        sink.record(0)
        stream = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
                  + frame(1, b'{"type": "welcome"}') + frame(9, b"ping")
                  + frame(1, b'{"type": "message", "content": {"t": 100}}')
                  + frame(1, b'{"content": {"t": 250}, "pad": "' + b"x" * 300 + b'"}')
                  + frame(8, (4008).to_bytes(2, "big")))
        for n in range(0, len(stream), 7):
            client.data_received(stream[n:n + 7])
        assert client.opened.done() and client.status == 101
        assert sink.frames == 2 and all(latency > 0 for latency in sink.latencies)
        assert b"\x8a\x84\x00\x00\x00\x00ping" in transport.written
        assert sink.pings == 1 and sink.close_codes == {4008: 1} and transport.closed

    asyncio.run(scenario())


def test_a_refused_upgrade_fails_the_open():
    async def scenario():
        client = load.WsClient("a", load.Sink(), welcome=False)
        client.connection_made(FakeTransport())
        client.data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(ConnectionError, match="503"):
            await client.opened

    asyncio.run(scenario())


def test_the_poster_finds_the_end_of_sized_and_chunked_replies():
    async def scenario():
        replies = []
        poster = load.Poster(lambda _, status: replies.append(status))
        poster.connection_made(FakeTransport())
        sized = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"sent\": []}"
        chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        stream = sized + chunked + sized
        for n in range(0, len(stream), 5):
            poster.data_received(stream[n:n + 5])
        assert replies == [200, 404, 200] and poster.statuses == {200: 2, 404: 1} and not poster.buffer

    asyncio.run(scenario())


def test_requests_are_complete_json():
    request = load.post_bytes(load.batch([b"r-1", b"r-2"], 42))
    head, body = request.split(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == [{"receiver_id": "r-1", "content": {"t": 42}}, {"receiver_id": "r-2", "content": {"t": 42}}]
    assert json.loads(load.broadcast(7)) == {"broadcast": True, "content": {"t": 7}}



def test_a_poster_whose_connection_dropped_is_lost_and_the_loops_carry_on():
    async def scenario():
        closed_loop = load.ClosedLoop(lambda n: b"POST %d" % n)
        dropped, alive = load.Poster(closed_loop.on_reply), load.Poster(closed_loop.on_reply)
        for poster in (dropped, alive):
            poster.connection_made(FakeTransport())
        dropped.transport.close()
        closed_loop.start([dropped, alive])
        assert dropped.lost and not alive.lost and closed_loop.sent == 1
        assert dropped.transport.written == b"" and alive.transport.written == b"POST 1"

        open_loop = load.OpenLoop(1000.0, lambda n, stamp: b"POST %d" % n)
        first, second = load.Poster(open_loop.on_reply), load.Poster(open_loop.on_reply)
        for poster in (first, second):
            poster.connection_made(FakeTransport())
        first.connection_lost(None)
        await open_loop.run([first, second], 0.003)
        assert first.transport.written == b"" and second.transport.written == b"POST 1"
        assert open_loop.sent == 1 and open_loop.late == len(open_loop.backlog) == 2
        assert load.close_posters([first, second]) == 1

    asyncio.run(scenario())


def test_the_in_process_loop_gets_a_200_for_every_post_single_and_batched():
    from tests.bench.inprocess_loop import WARM_UP, run

    assert run(3, 0) == WARM_UP + 3
    assert run(1, 5) == WARM_UP + 1
