"""Admin endpoint rendering and the CLI-side formatting."""

from __future__ import annotations

from summoner.admin import base_url, format_status


def test_format_status_table():
    rows = [
        {"name": "hello.example.org", "image": "hello", "state": "ready", "address": "127.0.0.10", "port": 8080,
         "uptime": 3725.0, "idle": 12.5, "boot_count": 3, "last_error": None, "retry_in": None},
        {"name": "silent.example.org", "image": "silent", "state": "failed", "address": "127.0.0.12",
         "port": 8080, "uptime": None, "idle": None, "boot_count": 1,
         "last_error": "not ready within 3s; last probe error: connection closed\nmore", "retry_in": 4.2},
    ]
    text = format_status(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "IMAGE", "STATE", "ADDRESS", "UPTIME", "IDLE", "BOOTS", "LAST", "ERROR"]
    assert "1h02m" in lines[1] and "12.5s" in lines[1] and lines[1].split()[6] == "3"
    assert "(retry in 4s) not ready within 3s" in lines[2] and "more" not in lines[2]


def test_base_url():
    assert base_url("127.0.0.1:9154") == "http://127.0.0.1:9154"
    assert base_url(("::1", 9154)) == "http://[::1]:9154"
    assert base_url("http://x:1/") == "http://x:1"
    assert base_url(None) == "http://127.0.0.1:9154"
