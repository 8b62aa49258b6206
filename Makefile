VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

setup: $(STAMP)

# uv installs the registry's torch + torchvision pair (pip here would pick a CPU torch without torchvision).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install --python $(PY) -C editable_mode=compat -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q --durations=15

demo: setup
	$(PY) search/demo.py --task segmentation
	$(PY) search/demo.py --task classification

# The demos' outputs: data, experiments, and teachers, students and plug libraries (checkpoints/demo*/).
clean:
	rm -rf runs data/synthetic data/synthetic_shapes checkpoints/demo checkpoints/demo_classification
