"""Headless Debian chromium, driven by Selenium through Debian's chromedriver."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.helpers import ROOT, require_tool

OUTPUT = ROOT / "test-output" / "dashboard"  # screenshots
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")


@contextlib.asynccontextmanager
async def chromium(width: int = 1280, height: int = 800) -> AsyncIterator[webdriver.Chrome]:
    """A browser for one test (skipped, or failed in CI, without chromium/chromium-driver).
    Selenium blocks: call it through `asyncio.to_thread`."""
    binary = require_tool("/usr/bin/chromium", "chromium")
    driver = require_tool("/usr/bin/chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    browser = await asyncio.to_thread(webdriver.Chrome, options=options, service=Service(driver))
    try:
        yield browser
    finally:
        await asyncio.to_thread(browser.quit)
