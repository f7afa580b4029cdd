"""Debian's Chromium, driven by Selenium through Debian's chromedriver, over the Prefect UI (test helper)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def unavailable() -> str | None:
    """Why no browser can be driven here, or None."""
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} missing (apt-get install {pkg}; `make test` does it as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -c constraints.txt -e '.[test]')"
    return None


class Browser:
    """A headless Chromium with a fresh profile; `with Browser() as b: b.open(url)`."""

    def __init__(self, width: int = 1400, height: int = 1000):
        self.size = (width, height)

    def __enter__(self) -> "Browser":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="tapeline-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
                     f"--window-size={self.size[0]},{self.size[1]}"):
            opts.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self) -> str:
        return self.driver.find_element("tag name", "body").text

    def wait_text(self, *needles: str, timeout: float = 45.0) -> str:
        """The page's visible text once every needle is in it (the UI renders after its API calls)."""
        deadline = time.time() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.time() > deadline:
                raise AssertionError(f"not on {self.driver.current_url} after {timeout:.0f} s: {missing}\n"
                                     f"page text: {text[:1500]}")
            time.sleep(0.5)

    def click_text(self, label: str) -> None:
        """Click the innermost visible element whose text is label (a tab, a link)."""
        deadline = time.time() + 20
        # Vue splits text nodes around comments: match on the element's whole text, innermost first
        xpath = f"//*[normalize-space(.)='{label}' and not(*[normalize-space(.)='{label}'])]"
        while True:
            for el in self.driver.find_elements("xpath", xpath):
                if el.is_displayed():
                    el.click()
                    return
            if time.time() > deadline:
                raise AssertionError(f"no visible '{label}' on {self.driver.current_url}")
            time.sleep(0.5)

    def images(self) -> list[dict]:
        """Every <img> with a data: source: its alt text and the size the browser decoded it at."""
        return self.driver.execute_script(
            "return Array.from(document.images).filter(i => i.src.startsWith('data:'))"
            ".map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight, complete: i.complete}))")

    def scroll_to_text(self, label: str) -> None:
        xpath = f"//*[normalize-space(.)='{label}' and not(*[normalize-space(.)='{label}'])]"
        for el in self.driver.find_elements("xpath", xpath):
            if el.is_displayed():
                self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", el)
                return

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path
