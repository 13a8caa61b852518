"""Screenshots of the dashboard's main views, from `agentledger demo`'s data, into docs/screenshots/.

    scripts/screenshots [--out docs/screenshots] [--keep]

Starts a fresh gateway on 127.0.0.1 in a temporary data directory (with x402_fetch_allow_hosts=127.0.0.1 so
the demo's purchase through /v1/x402/fetch runs), runs `agentledger demo` against it, signs in with the admin
token of its first start in Debian's chromium (/usr/bin/chromium, driven by Playwright, as the e2e tests do)
and writes one image per view at a 1280×800 viewport: PNG, or JPEG when the PNG would exceed --max-kb.
Views the installation does not serve (404, or not in the navigation) are skipped and named.
Nothing but 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(data_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "agentledger", "--data-dir", str(data_dir),
        "--set", "log_level=warning", "--set", "x402_fetch_allow_hosts=127.0.0.1",
    ]  # fmt: skip


def start(data_dir: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [*cli(data_dir), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("the gateway did not answer /healthz within 60 s")
    admin = re.search(r"admin token\s+(\S+)", log.read_text())
    if admin is None:
        raise RuntimeError(f"no admin token in the first start's banner:\n{log.read_text()[-3000:]}")
    return proc, admin.group(1)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def shoot(page: Any, out: Path, name: str, max_kb: int) -> Path:
    png = out / f"{name}.png"
    jpg = out / f"{name}.jpg"
    for old in (png, jpg):
        old.unlink(missing_ok=True)
    page.screenshot(path=str(png), type="png")
    if png.stat().st_size <= max_kb * 1024:
        return png
    png.unlink()
    page.screenshot(path=str(jpg), type="jpeg", quality=80)
    return jpg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the images go")
    p.add_argument("--max-kb", type=int, default=300, help="a PNG larger than this is written as JPEG (300)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory (its path is printed)")
    args = p.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="agentledger-screenshots-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = None
    written: list[Path] = []
    skipped: list[str] = []
    try:
        proc, admin = start(work / "data", port, work / "gateway.log")
        demo = subprocess.run(
            [*cli(work / "data"), "demo", "--url", base, "--admin-token", admin],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if demo.returncode != 0:
            raise RuntimeError(f"agentledger demo failed:\n{demo.stdout[-2000:]}\n{demo.stderr[-3000:]}")
        tag = re.search(r"\(tag (\S+?)\)", demo.stdout)
        if tag is None:
            raise RuntimeError(f"no tag in the demo's report:\n{demo.stdout[-2000:]}")
        run_id = f"trip-plan-{tag.group(1)}"
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        month = urlencode(
            {
                "group_by": "agent",
                "interval": "day",
                "from": (now - timedelta(days=30)).isoformat(),
                "to": (now + timedelta(hours=1)).isoformat(),
            }
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            context = browser.new_context(base_url=base, viewport=VIEWPORT)
            page = context.new_page()
            page.goto("/signin")
            page.fill("#token", admin)
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            nav = set(page.eval_on_selector_all("nav a[href]", "els => els.map(e => e.getAttribute('href'))"))

            def view(name: str, path: str, *, needs_nav: str | None = None, then: Any = None) -> None:
                if needs_nav is not None and needs_nav not in nav:
                    skipped.append(f"{name} ({needs_nav} not in the navigation)")
                    return
                resp = page.goto(path)
                if resp is None or resp.status != 200:
                    skipped.append(f"{name} ({path}: {resp.status if resp else 'no answer'})")
                    return
                page.wait_for_load_state("networkidle")
                if then is not None:
                    then()
                written.append(shoot(page, args.out, name, args.max_kb))

            def select_step() -> None:
                rows = page.locator("#waterfall .wf-row")
                model = page.locator("#waterfall .wf-row:has(.badge:text-is('model_call'))")
                (model.first if model.count() else rows.nth(min(2, rows.count() - 1))).click()
                page.wait_for_timeout(200)

            def first_link(selector: str) -> None:
                link = page.locator(selector).first
                href = link.get_attribute("href") if link.count() else None
                if href:
                    page.goto(href)
                    page.wait_for_load_state("networkidle")

            view("overview", "/", needs_nav="/")
            view("runs", "/runs")
            view("run-detail", f"/runs/{run_id}", then=select_step)
            view("sessions", "/sessions", needs_nav="/sessions")
            view("session", "/sessions", needs_nav="/sessions", then=lambda: first_link("main a[href^='/sessions/']"))
            view("requests", "/requests", needs_nav="/requests")
            view("costs", f"/costs?{month}")
            view("budgets", "/budgets")
            view("policies", "/policies", needs_nav="/policies")
            view("approvals", "/approvals")
            view("finance", "/finance")
            view("audit", "/audit")
            view("keys", "/keys", needs_nav="/keys")
            browser.close()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        stop(proc)
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    for f in written:
        print(f"{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}  {f.stat().st_size // 1024} KB")
    for s in skipped:
        print(f"skipped: {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
