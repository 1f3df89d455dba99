"""
``GET /metrics`` (CONTRACT.md section 10), in memory: relayd's series, the
build info, the process and Python collectors, a request-duration histogram
by path, and OpenMetrics when the scraper asks for it.
"""

from __future__ import annotations

import platform

from relayd import __version__


def scrape(sim, accept=None):
    response = sim.request("GET", "/metrics", headers={"Accept": accept} if accept else None)
    assert response.status == 200
    return response


def test_build_info_names_the_version(sim):
    text = scrape(sim).body.decode()
    assert f'relay_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0' in text


def test_process_and_python_collectors(sim):
    text = scrape(sim).body.decode()
    for series in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total",
                   "python_info", "python_gc_collections_total"):
        assert f"\n{series}" in text, series


def test_request_duration_by_path(sim):
    sim.clock.advance(1)
    sim.post({"receiver_id": "a", "content": 1})
    sim.request("GET", "/health-check")
    text = scrape(sim).body.decode()
    assert 'relay_http_request_duration_seconds_count{path="/send-message"} 1.0' in text
    assert 'relay_http_request_duration_seconds_count{path="/health-check"} 1.0' in text
    assert 'relay_http_request_duration_seconds_bucket{le="+Inf",path="/send-message"} 1.0' in text
    assert 'relay_http_requests_total{code="200",path="/send-message"} 1.0' in text


def test_text_format_by_default(sim):
    response = scrape(sim)
    assert response.header("content-type").startswith("text/plain; version=0.0.4")
    assert not response.body.rstrip().endswith(b"# EOF")


def test_openmetrics_when_accepted(sim):
    response = scrape(sim, "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert response.header("content-type").startswith("application/openmetrics-text")
    assert response.body.rstrip().endswith(b"# EOF")
    assert response.header("vary") == "Accept"
