"""The MLflow UI as a user meets it: a quick study into a fresh store, served by `make ui`,
opened in a real browser (Debian's chromium, driven by Playwright) at the address `make ui`
prints. The chart view must show every variant's val_bpd by epoch and by elapsed_hours
without a click, and the sample grids; stopping `make ui`, even by `kill -9` of make, must
free its port."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_server import TINY, pixelexp  # (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class MakeUi:
    """`make ui PORT=...` on a store, as a user starts it, and its printed lines."""

    def __init__(self, folder: Path, uri: str):
        self.port, self.folder = free_port(), folder
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIXELEXP_RUNS": str(folder / "runs")}
        self.out = (folder / "make-ui.log").open("w")
        self.proc = subprocess.Popen(["make", "-s", "-C", str(REPO), "ui", f"PORT={self.port}"], env=env,
                                     stdout=self.out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return (self.folder / "make-ui.log").read_text()

    def wait_for_views(self, timeout: float = 180) -> dict[str, str]:
        """{experiment: chart-view URL} as printed, once the server answers."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"make ui ended: {self.text()[-2000:]}"
            if "experiments in" in self.text():
                time.sleep(0.5)
                return {line.split()[0]: line.split()[1] for line in self.text().splitlines()
                        if line.startswith("  ") and "http://" in line}
            time.sleep(0.5)
        pytest.fail(f"make ui printed no addresses in {timeout} s: {self.text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop make by its process id, as `kill <pid>` does (SIGTERM, which make passes on
        to its command) or `kill -9 <pid>` (make dies alone; its command must notice)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.out.close()


def chart_problems(page, url: str, variants: dict[str, str]) -> list[str]:
    """What the chart view at `url` fails to show, with no click: every variant's val_bpd
    by epoch and by hour (elapsed_hours as its x-axis), nothing else drawn (no parent run),
    and each variant's sample grid. `variants`: {name: run id}."""
    page.goto(url)
    try:
        page.get_by_text("bits/dim by hour").first.wait_for(timeout=60_000)
        page.get_by_text("elapsed_hours").first.wait_for(timeout=30_000)
    except Exception as e:
        return [f"the chart view did not open ({type(e).__name__}): {page.inner_text('body')[:500]}"]
    time.sleep(3)  # the curves and images come after the section titles
    problems = [] if "/runs" in page.url else [f"not on the runs page: {page.url}"]
    legend = [line for line in page.inner_text("body").splitlines() if line.endswith(" (val_bpd)")]
    images = [img.get_attribute("src") or "" for img in page.locator("img").all()]
    for name, run_id in variants.items():
        if legend.count(f"{name} (val_bpd)") != 2:  # the by-epoch and the by-hour chart
            problems.append(f"variant {name}: val_bpd in {legend.count(f'{name} (val_bpd)')} of 2 charts")
        if not any("samples%2Bstep" in src and f"run_uuid={run_id}" in src for src in images):
            problems.append(f"variant {name}: no sample grid")
    others = sorted({line for line in legend if line[:-len(" (val_bpd)")] not in variants})
    if others:
        problems.append(f"drawn besides the variants: {others}")
    return problems


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The smoke experiment (tiny) in a fresh SQLite store."""
    folder = tmp_path_factory.mktemp("ui-study")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    pixelexp(folder, uri, "experiment", str(REPO / "experiments" / "smoke.yaml"), *TINY, "--quiet", "--no-report")
    return folder, uri


def test_make_ui_shows_every_variant_by_epoch_and_hour_without_a_click_and_stops(study):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    playwright = pytest.importorskip("playwright.sync_api")
    folder, uri = study
    ui = MakeUi(folder, uri)
    try:
        views = ui.wait_for_views()
        assert list(views) == ["smoke"], ui.text()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("smoke")
            runs = {r.data.tags["pixelexp.variant"]: r.info.run_id for r in client.search_runs([exp.experiment_id])
                    if "pixelexp.variant" in r.data.tags}
            assert sorted(runs) == ["pixel_cnn", "pixel_rnn"]
            assert chart_problems(page, views["smoke"], runs) == []
            # the check sees a missing variant: take one run away and look again
            client.delete_run(runs["pixel_cnn"])
            missing = chart_problems(browser.new_page(viewport={"width": 1600, "height": 2400}), views["smoke"], runs)
            assert any("pixel_cnn" in m for m in missing) and not any("pixel_rnn" in m for m in missing), missing
            client.restore_run(runs["pixel_cnn"])
            browser.close()
    finally:
        ui.stop(signal.SIGKILL)
    deadline = time.time() + 30
    while port_open(ui.port) and time.time() < deadline:
        time.sleep(0.5)
    assert not port_open(ui.port), "the MLflow UI still serves after make ui was killed"
    left = subprocess.run(["pgrep", "-f", f"--port {ui.port}"], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes of the stopped server are left: {left}"


def test_make_ui_on_a_missing_store_is_one_line(tmp_path):
    done = subprocess.run(["make", "-s", "-C", str(REPO), "ui", f"PORT={free_port()}"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "MLFLOW_TRACKING_URI":
                                                       f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"})
    err = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(err) == 1 and "no MLflow store" in err[0], done.stderr
    assert not (tmp_path / "none").exists()


def test_every_experiment_of_a_store_gets_the_chart_view(tmp_path):
    """Without a browser: an experiment made elsewhere gets the saved view `make ui` links to."""
    from pixelexp.runs import tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.open_client(uri, create=True)
    eid = client.create_experiment("made-elsewhere")
    assert [name for _, name in tracking.experiments(uri)] == ["Default", "made-elsewhere"]
    state = tracking.ui.read_view(client.get_experiment(eid).tags[tracking.ui.VIEW_TAG])
    by_hour = [c for c in state["compareRunCharts"] if c.get("selectedXAxisMetricKey") == "elapsed_hours"]
    assert {c["metricKey"] for c in by_hour} == {"val_bpd", "train_bpd"}
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": tracking.ui.GROUP_TAG}]
