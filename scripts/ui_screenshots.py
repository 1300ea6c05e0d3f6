"""Screenshots of an experiment's chart view for the README, made by a real browser.

    make ui &                      # serves the store, prints each experiment's address
    .venv/bin/python scripts/ui_screenshots.py '<the address>' docs/ui

Writes chart-view.png (the runs and the curves by epoch and by hour) and
samples-settings.png (the sample grids and the settings that differ). Uses Debian's
chromium (`apt-get install chromium`) through Playwright; no browser download.
"""

import argparse
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def section_top(page, title: str) -> float:
    box = page.get_by_text(title, exact=True).first.bounding_box()
    return box["y"] if box else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="an experiment's chart-view address, as `make ui` prints it")
    p.add_argument("out", help="folder for the PNGs")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 3400})  # every section, unscrolled
        page.goto(args.url)
        page.get_by_text("bits/dim by hour").first.wait_for(timeout=60_000)
        time.sleep(5)  # curves and images load after the titles
        assistant = page.get_by_role("button", name="Close")  # MLflow's assistant panel, if shown
        if assistant.count():
            assistant.first.click()
            time.sleep(1)
        samples = section_top(page, "samples")
        page.screenshot(path=out / "chart-view.png", clip={"x": 0, "y": 0, "width": 1400, "height": samples - 10})
        end = section_top(page, "Add section")  # below the last section
        page.screenshot(path=out / "samples-settings.png",
                        clip={"x": 0, "y": samples - 20, "width": 1400, "height": max(200, end - samples + 10)})
        browser.close()
    print(f"wrote {out / 'chart-view.png'} and {out / 'samples-settings.png'}")


if __name__ == "__main__":
    main()
