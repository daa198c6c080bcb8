# Two commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: venv test lint format demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -m "not slow and not gpu"

# The whole recipe on CPU in minutes: demo shards, the curation of the raw videos (cuts, motion, text, CLIP scores,
# filters, report), the tiny autoencoder, Stages I, II (on the curated clips), III (text-to-video and image-to-video),
# then an image-to-video sample from the final export. Re-running resumes / reuses what exists.
DEMO_RUN := outputs/runs/demo
demo: $(STAMP)
	$(PY) scripts/make_demo_data.py --out outputs/demo_data
	$(PY) -m data.curation experiment=demo input=outputs/demo_data/raw out=outputs/demo_data/curated
	$(PY) -m train stage=autoencoder experiment=demo
	$(PY) -m train stage=image_pretrain experiment=demo
	$(PY) -m train stage=video_pretrain experiment=demo \
		'data.sources.0.urls=[$${paths.data_root}/curated/subsets/pretrain/shards/*.tar]'
	$(PY) -m train stage=video_finetune experiment=demo
	$(PY) -m train stage=img2vid_finetune experiment=demo
	$(PY) scripts/sample.py --export $(DEMO_RUN)/img2vid_finetune/export \
		--image outputs/demo_data/conditioning/clip_00002.png --fps 8 --motion-bucket-id 80 \
		--steps 25 --min-cfg 1.0 --max-cfg 2.5 --seed 0 --out outputs/demo_samples

bench: $(STAMP)
	$(PY) scripts/bench_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
