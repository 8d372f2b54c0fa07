# Two environments, because vidore-benchmark (every release) needs mteb<2 while MTEB's current line is 2.x:
#   .venv       core + vidore + train + dev   (torch 2.13.0 CPU, transformers 4.57)
#   .venv-mteb  core + mteb + dev             (torch 2.14.1 + torchvision 0.29.1, transformers 5.x)
PY ?= python3
VENV := .venv
VENV_MTEB := .venv-mteb
PIP := --disable-pip-version-check -q
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env test test-main test-mteb demo demo-study bench lint clean

env: $(VENV)/.installed $(VENV_MTEB)/.installed

$(VENV)/.installed: pyproject.toml constraints/venv.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP) torch==2.13.0
	$(VENV)/bin/pip install $(PIP) -c constraints/venv.txt -e ".[vidore,train,mmeb,dev]"
	# DeepSpeed (sdist only): built against the torch above (no build isolation, so no second torch is fetched),
	# without compiled ops (the torch optimizer path and gloo collectives need none); README "Training"
	DS_BUILD_OPS=0 $(VENV)/bin/pip install $(PIP) --no-build-isolation -c constraints/venv.txt "deepspeed==0.19.8"
	$(VENV)/bin/python -m compileall -q plugins/moca_plugins  # the .pth hook runs at every start: never recompile it
	touch $@

$(VENV_MTEB)/.installed: pyproject.toml constraints/venv-mteb.txt
	$(PY) -m venv $(VENV_MTEB)
	$(VENV_MTEB)/bin/pip install $(PIP) torch==2.14.1 torchvision==0.29.1
	$(VENV_MTEB)/bin/pip install $(PIP) -c constraints/venv-mteb.txt -e ".[mteb,mmeb,st,dev]"
	$(VENV_MTEB)/bin/python -m compileall -q plugins/moca_plugins
	touch $@

test: env
	@status=0; \
	$(MAKE) --no-print-directory test-main || status=1; \
	$(MAKE) --no-print-directory test-mteb || status=1; \
	exit $$status

test-main: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-mteb: $(VENV_MTEB)/.installed
	$(VENV_MTEB)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: env
	$(VENV)/bin/python demo/run.py $(DEMO_ARGS)

demo-study: env
	$(VENV)/bin/python demo/run.py --preset study $(DEMO_ARGS)

bench: env
	$(VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check moca_model moca_bench moca_train plugins tests benchmarks demo

clean:
	rm -rf $(VENV) $(VENV_MTEB)
