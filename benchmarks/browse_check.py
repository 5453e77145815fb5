"""Browse a grid's results as a user would, in headless Chromium, and save screenshots (issue 15).

    python benchmarks/browse_check.py [--quick] [--out docs/images] [--home DIR]

Into a temporary ``NST_HOME`` (or ``--home``): ``nst server start`` (a Prefect server on a free
loopback port), ``nst grid run experiments.yaml --grid demo`` (``--quick``: the demo's four cells at
96 px and 12 steps), ``mlflow ui`` on the same store, then headless Chromium (Debian package
``chromium``; driven over the DevTools protocol with the ``websockets`` package, no Playwright) to:

* ``browse_runs.png``         the experiment's runs table (training view), the parent run expanded;
* ``browse_run.png``          a cell's run page, its artifacts (``output.png``);
* ``browse_run_images.png``   that cell's ``evolution`` image chart: the output at the last step, the
  step slider over the steps it was logged at (full screen);
* ``browse_compare.png``      the chart view of two cells (one content, two styles): their ``output``
  image chart full screen, the two outputs side by side under their run names;
* ``browse_prefect.png``      the grid's Prefect flow run (its task runs) after the grid has ended;
* ``browse_prefect_artifact.png`` the Prefect table artifact.

Also checked and printed (no screenshot kept): where the experiment opens without the
``workflowType`` URL parameter, i.e. whether the ``mlflow.experimentKind`` tag alone selects the view.
Each page is waited for by polling its text (deadline, no fixed sleeps) and the screenshot is taken
once its images have loaded.  Everything started is stopped at the end (the test suite's
``tests/services.py`` helpers: free ports, waiting on a URL, process groups).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from services import free_port, start_process, stop_processes, wait_http  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]


# --------------------------------------------------------------------------- a tiny CDP client


class Page:
    """One Chromium tab over the DevTools protocol (commands and a few waits)."""

    def __init__(self, ws) -> None:
        self.ws, self.n = ws, 0

    async def cmd(self, method: str, **params):
        self.n += 1
        mid = self.n
        await self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expr: str):
        r = await self.cmd("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"js failed: {r['exceptionDetails'].get('text')} in {expr[:80]}")
        return r["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.cmd("Page.navigate", url=url)

    async def wait(self, expr: str, timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if await self.js(expr):
                    return
            except RuntimeError:
                pass
            await asyncio.sleep(0.25)
        text = (await self.js("document.body ? document.body.innerText.slice(0, 400) : ''")) or ""
        raise TimeoutError(f"timed out waiting for {what or expr}; page shows: {text!r}")

    async def wait_text(self, *texts: str, timeout: float = 60.0) -> None:
        cond = " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in texts)
        await self.wait(f"!!document.body && {cond}", timeout, what=f"text {texts}")

    async def settle(self, timeout: float = 20.0) -> None:
        """Images loaded and the page's text unchanged for a second."""
        await self.wait("Array.from(document.images).every(i => i.complete)", timeout, "images")
        last, stable_since, deadline = None, time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = await self.js("document.body.innerText.length + ':' + document.images.length")
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                return
            await asyncio.sleep(0.2)

    async def click_text(self, text: str, selector: str = "button, [role=button], [role=tab], a, span") -> bool:
        return await self.js(f"""(() => {{
            const els = Array.from(document.querySelectorAll({json.dumps(selector)}));
            const el = els.find(e => e.innerText && e.innerText.trim() === {json.dumps(text)});
            if (!el) return false; el.click(); return true; }})()""")

    async def shot(self, path: Path) -> Path:
        r = await self.cmd("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r["data"]))
        print(f"  saved {path}")
        return path


async def open_page(debug_port: int, width: int = 1500, height: int = 950):
    import websockets

    req = urllib.request.Request(f"http://127.0.0.1:{debug_port}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        target = json.loads(r.read())
    ws = await websockets.connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20)
    page = Page(ws)
    await page.cmd("Page.enable")
    await page.cmd("Runtime.enable")
    await page.cmd("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                   mobile=False)
    return page


# --------------------------------------------------------------------------- the tour


async def tour(debug_port: int, mlflow_base: str, prefect_base: str, info: dict, out: Path) -> dict:
    from tasks.mlflow_views import experiment_url, run_url

    exp_id, cells = info["experiment_id"], info["cells"]
    found: dict = {}
    page = await open_page(debug_port)

    # 0. without the workflowType parameter, in a fresh profile: which view does the tag alone give?
    await page.goto(f"{mlflow_base}/#/experiments/{exp_id}")
    await page.wait("/(runs|overview|traces)/.test(location.hash)", 90, "the experiment page's redirect")
    await page.settle()
    found["opened_without_workflowType"] = await page.js("location.hash")
    print(f"  experiment opened without workflowType: {found['opened_without_workflowType']}")

    # 1. the runs table (training view), the assistant panel closed, the parent run expanded to its cells
    await page.goto(experiment_url(exp_id, mlflow_base))
    await page.wait_text(f"grid {info['grid']}", timeout=60)
    await page.js("(() => { const b = Array.from(document.querySelectorAll('button'))"
                  ".find(b => b.getAttribute('aria-label') === 'Close'); if (b) b.click(); })()")
    await expand_parent(page, cells[0]["name"])
    await page.shot(out / "browse_runs.png")

    # 2. one cell: its run page's output image (Artifacts tab), then its images by step (chart view)
    cell = cells[0]
    await page.goto(run_url(exp_id, cell["run_id"], mlflow_base).replace("?", "/artifacts/output.png?"))
    await page.wait_text(cell["name"], timeout=60)
    await page.wait("Array.from(document.images).some(i => i.complete && i.naturalWidth > 64)", 60,
                    "the output image")
    await page.settle()
    await page.shot(out / "browse_run.png")
    await chart_view(page, mlflow_base, exp_id, f"tags.cell_id = '{cell['cell_id']}'", cell["name"], "evolution")
    found["evolution_steps"] = await open_chart(page, "evolution", last_step=True)
    await page.shot(out / "browse_run_images.png")

    # 3. two cells compared: the chart view of the cells with one content, their `output` image chart full
    # screen (a card is a third of the page wide: one run per row in it; full screen, side by side)
    await chart_view(page, mlflow_base, exp_id, "tags.axis.content = 'tubingen'", cells[0]["name"], "output")
    await open_chart(page, "output")
    await page.wait("document.querySelectorAll('[role=dialog] img').length >= 2", 60, "two output images")
    await page.settle()
    found["compared"] = await page.js("Array.from(document.querySelector('[role=dialog]').innerText.split('\\n'))"
                                      ".filter(l => /^00\\d /.test(l))")
    found["compared_image_rows"] = await page.js(
        "Array.from(new Set(Array.from(document.querySelectorAll('[role=dialog] img'))"
        ".map(i => Math.round(i.getBoundingClientRect().top)))).length")
    await page.shot(out / "browse_compare.png")
    if len(found["compared"]) < 2 or found["compared_image_rows"] != 1:
        raise AssertionError(f"the two cells' outputs are not side by side: {found}")

    # 4. the Prefect flow run of the grid (its task runs), and its table artifact
    await page.goto(f"{prefect_base}/runs/flow-run/{info['flow_run_id']}")
    await page.wait_text(info["flow_run_name"], timeout=90)
    await page.settle()
    await page.shot(out / "browse_prefect.png")
    await page.goto(f"{prefect_base}/artifacts/artifact/{info['table_artifact_id']}")
    await page.wait_text("starry_night", timeout=60)
    await page.settle()
    await page.shot(out / "browse_prefect_artifact.png")
    await page.ws.close()
    return found


async def expand_parent(page: Page, child_name: str) -> None:
    """Open the parent run's row (the runs table shows child runs folded under it)."""
    await page.wait("!!document.querySelector('button[data-component-id*=runnamecellrenderer]')", 60, "the expander")
    await page.settle()
    if not await page.js(f"document.body.innerText.includes({json.dumps(child_name[:12])})"):  # the UI remembers
        await page.js("document.querySelector('button[data-component-id*=runnamecellrenderer]').click()")
    await page.wait_text(child_name[:12], timeout=30)
    await page.settle()


async def chart_view(page: Page, base: str, exp_id: str, search: str, child_name: str, charts: str) -> None:
    """The experiment's chart view of the runs matching `search`, its charts narrowed to `charts`."""
    from urllib.parse import quote

    await page.goto(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"
                    f"&searchFilter={quote(search)}")
    await page.wait("!!document.querySelector('input[placeholder=\"Search metric charts\"]')", 60, "the charts")
    await expand_parent(page, child_name)
    await page.js("(() => { const i = document.querySelector('input[placeholder=\"Search metric charts\"]');"
                  " i.focus(); i.select(); })()")
    await page.cmd("Input.insertText", text=charts)
    await page.wait(f"!!({CHART_CARD % json.dumps(charts)})", 60, f"the {charts} chart")
    await page.settle()


#: The chart card whose title is %s (a JSON string): the nearest ancestor of the title with its buttons.
CHART_CARD = """(() => { const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let n;
  while ((n = w.nextNode())) { if (n.textContent.trim() === %s) { let c = n.parentElement;
    for (let i = 0; i < 10 && c; i++) { if (c.querySelector('[data-component-id=fullscreen_button_chartcard]'))
      return c; c = c.parentElement; } } } return null; })()"""


async def open_chart(page: Page, key: str, last_step: bool = False) -> list | None:
    """Open an image chart full screen; with `last_step`, move its step slider to the last step."""
    await page.js(f"({CHART_CARD % json.dumps(key)}).querySelector('[data-component-id=fullscreen_button_chartcard]')"
                  ".click()")
    await page.wait("!!document.querySelector('[role=dialog]')", 30, "the full-screen chart")
    steps = None
    if last_step:
        sel = "[role=dialog] input[type=number]"
        await page.wait(f"!!document.querySelector('{sel}')", 30, "the step slider")
        steps = await page.js(f"(() => {{ const i = document.querySelector('{sel}'); i.focus(); i.select();"
                              f" return [i.min, i.max]; }})()")
        await page.cmd("Input.insertText", text=str(steps[1]))
        for kind in ("keyDown", "keyUp"):  # Enter, then Tab: the input commits its value on blur
            await page.cmd("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
        await page.js(f"document.querySelector('{sel}').blur()")
    await page.wait("Array.from(document.querySelectorAll('[role=dialog] img'))"
                    ".some(i => i.complete && i.naturalWidth > 0)", 60, f"the {key} images")
    await page.settle()
    return steps


# --------------------------------------------------------------------------- setup


def quick_experiments(dst: Path) -> Path:
    """The demo grid at 96 px and 12 steps (paths made absolute), for a faster check."""
    import yaml

    src = yaml.safe_load((ROOT / "experiments.yaml").read_text())
    demo = src["grids"]["demo"]
    demo["axes"] = {k: [str(ROOT / v) for v in vs] for k, vs in demo["axes"].items()}
    demo["settings"] = {**demo.get("settings", {}), "size": 96, "steps": 12}
    demo["intermediate_images"] = 3
    keep = {k: src[k] for k in ("version", "defaults", "presets") if k in src}
    path = dst / "experiments.yaml"
    path.write_text(yaml.safe_dump({**keep, "grids": {"demo": demo}}, sort_keys=False))
    return path


def grid_info(home: Path, prefect_api: str) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["PREFECT_API_URL"] = prefect_api
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    c = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("nst-grid/demo")
    runs = c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get("nst.kind") == "grid")
    cells = sorted(({"run_id": r.info.run_id, "name": r.info.run_name, "index": int(r.data.tags["cell_index"]),
                     "cell_id": r.data.tags["cell_id"]}
                    for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                    and r.info.status == "FINISHED"), key=lambda d: d["index"])
    with get_client(sync_client=True) as pc:
        flow_runs = [fr for fr in pc.read_flow_runs() if fr.state_name == "Completed"]
        grid_run = next(fr for fr in flow_runs if "nst-grid" in str(pc.read_flow(fr.flow_id).name))
        arts = {a.key: a for a in pc.read_artifacts() if a.key}
    return {"grid": "demo", "experiment_id": exp.experiment_id, "experiment_tags": exp.tags,
            "parent_run_id": parent.info.run_id, "cells": cells, "flow_run_id": str(grid_run.id),
            "flow_run_name": grid_run.name, "table_artifact_id": str(arts["grid-demo"].id)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the demo grid at 96 px, 12 steps")
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"), help="screenshot folder")
    ap.add_argument("--home", help="NST_HOME to use (default: a temporary one, removed afterwards)")
    ap.add_argument("--skip-grid", action="store_true", help="--home already holds a finished demo grid")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="nst-browse-"))
    home = Path(args.home).resolve() if args.home else tmp / "home"
    env = {**os.environ, "NST_HOME": str(home), "NST_REPORTS": str(tmp / "reports"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    os.environ.update({k: env[k] for k in ("NST_HOME", "MLFLOW_TRACKING_URI")})
    nst = [sys.executable, "-m", "nst.cli"]
    procs: list[subprocess.Popen] = []
    logs = tmp / "logs"
    try:
        prefect_port, mlflow_port, debug_port = free_port(), free_port(), free_port()
        from flows import server

        st = server.running()
        if st is None:
            subprocess.run([*nst, "server", "start", "--port", str(prefect_port)], env=env, check=True)
            st = server.read_state()
        if not args.skip_grid:
            exp_file = quick_experiments(tmp) if args.quick else ROOT / "experiments.yaml"
            t0 = time.monotonic()
            r = subprocess.run([*nst, "grid", "run", str(exp_file), "--grid", "demo", "--quiet"], env=env, cwd=ROOT)
            print(f"grid run: exit {r.returncode} in {time.monotonic() - t0:.0f} s")
        info = grid_info(home, st.api_url)
        print(f"experiment {info['experiment_id']} tags {info['experiment_tags']}; "
              f"{len(info['cells'])} finished cells; flow run {info['flow_run_name']}")
        start_process("mlflow-ui", [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                                    env["MLFLOW_TRACKING_URI"], "--host", "127.0.0.1", "--port", str(mlflow_port),
                                    "--workers", "1"], env, logs, procs)
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", procs[-1:], 180)
        profile = tmp / "chromium-profile"
        start_process("chromium", [args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                   f"--remote-debugging-port={debug_port}", "--remote-allow-origins=*", "about:blank"],
                      env, logs, procs)
        wait_http(f"http://127.0.0.1:{debug_port}/json/version", procs[-1:], 60)
        found = asyncio.run(tour(debug_port, f"http://127.0.0.1:{mlflow_port}", st.url, info, out))
        print(json.dumps(found, indent=1))
        return 0
    finally:
        stop_processes(procs[::-1])
        if not args.home:
            subprocess.run([*nst, "server", "stop"], env=env)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
