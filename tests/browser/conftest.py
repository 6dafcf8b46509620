"""Browser tests get a Chromium page on pytest-django's live server."""
import pytest

from tests.browser.chromium import chromium_page


@pytest.fixture
def page(live_server):
    with chromium_page() as page:
        yield page
