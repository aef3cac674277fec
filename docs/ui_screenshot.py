"""Take the README's screenshot of the MLflow UI comparing a pipeline run's architectures.

    .venv/bin/pip install playwright          # the Python driver only; the browser is the system's
    apt-get install chromium                  # Debian's Chromium (or point --browser at another)
    .venv/bin/python docs/ui_screenshot.py [--out docs/images/mlflow-compare-runs.png] [--browser /usr/bin/chromium]

It runs the pipeline on the synthetic default in a temporary folder (three architectures, so there is
something to compare), starts ``sketchpipe ui`` there (a real ``mlflow server`` on 127.0.0.1), opens the
compare view of the run's nested architecture runs in headless Chromium, switches the UI to its "Model
training" mode, plots architecture against test accuracy, macro F1, size and training time, and saves
a screenshot. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKETCHPIPE = Path(sys.executable).parent / "sketchpipe"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def _choose(page, box: int, names: list[str]) -> None:
    """Pick ``names`` in the ``box``-th drop-down of the parallel coordinates plot (0 params, 1 metrics)."""
    for name in names:
        page.locator("[role=combobox]").nth(box).click()
        page.keyboard.type(name)
        page.wait_for_timeout(400)
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)
    page.keyboard.press("Escape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "mlflow-compare-runs.png"))
    parser.add_argument("--browser", default="/usr/bin/chromium", help="a Chromium executable")
    parser.add_argument("--architectures", default="lstm,conv_lstm,wavenet")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="ui-screenshot-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SKETCHPIPE_", "MLFLOW_"))}
    subprocess.run(
        [str(SKETCHPIPE), "run", "--config", str(ROOT / "sketchpipe.yaml"), "--architectures", args.architectures,
         "--epochs", str(args.epochs), "--progress", "off"],
        cwd=work, env=env, check=True,
    )  # fmt: skip
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sketchpipe")
    children = client.search_runs([experiment.experiment_id], "tags.mlflow.parentRunId != ''")
    run_ids = [run.info.run_id for run in children]
    port = _free_port()
    ui = subprocess.Popen(
        [str(SKETCHPIPE), "ui", "--port", str(port)], cwd=work, env=env, start_new_session=True
    )  # its own process group: stopping it stops its workers
    try:
        _wait_for(f"http://127.0.0.1:{port}/health")
        runs = urllib.parse.quote(json.dumps(run_ids, separators=(",", ":")))  # the UI parses the JSON as is
        url = f"http://127.0.0.1:{port}/#/compare-runs?runs={runs}&experiments=%5B%22{experiment.experiment_id}%22%5D"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.browser, headless=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            # MLflow 3.17 opens its assistant panel on a first visit: start with it closed
            page.add_init_script(
                "window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                "window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            )
            page.goto(url, wait_until="load")
            page.wait_for_timeout(3000)
            page.get_by_text("Model training", exact=True).click()  # the UI's mode switch, top left
            page.get_by_role("button", name="Clear All").click()
            _choose(page, 0, ["architecture"])
            _choose(page, 1, ["test_accuracy", "test_macro_f1", "num_params", "train_seconds"])
            page.mouse.click(900, 950)  # close the drop-down
            page.wait_for_timeout(1500)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    print(f"written: {args.out} ({url})")


if __name__ == "__main__":
    main()
