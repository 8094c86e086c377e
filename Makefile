PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[test,lora,ray]"  # lora, ray: the --lora and --engine ray tests run in CI too
	$(BIN)/pip install -q --no-deps "facenet-pytorch==2.6.0"  # MTCNN weights for `fer data faces`; --no-deps: it pins torch<2.3
	touch $(STAMP)

install: $(STAMP)

DEMO ?= demo
FER := $(BIN)/fer
STORE := $(DEMO)/features.zarr
# a small model and batch for 200 clips on 2 CPU cores (the defaults are sized for DFEW's ~9,400 training clips);
# validation loss picks the epoch (11 validation clips make UAR too coarse), and modality dropout keeps the
# fused models from fitting the 103 training clips through the face alone
DEMO_TRAIN := --fold all --epochs 40 --batch-size 16 --lr 3e-4 --layers 2 --ff 512 --monitor loss --modality-dropout 0.5

demo: $(STAMP)
	@echo "== 1/6 a synthetic dataset in the DFEW layout (200 clips)"
	@test -f $(DEMO)/data/synth.json || $(FER) data synth $(DEMO)/data --clips 200 --seed 0
	@echo "== 2/6 what it holds"
	$(FER) data info $(DEMO)/data
	@echo "== 3/6 stage 1: extract face, audio and pose features into one store (resumes if rerun)"
	$(FER) extract $(DEMO)/data -m face --weights auto --store $(STORE)
	$(FER) extract $(DEMO)/data -m audio --backbone mel --store $(STORE)
	$(FER) extract $(DEMO)/data -m pose --weights auto --size 160 --store $(STORE)
	$(FER) cache ls $(STORE)
	@echo "== 4/6 stage 2: train from the cache, 5 official folds each"
	@test -f $(DEMO)/runs/face-none/metrics.json || $(FER) train $(STORE) -m face --fusion none $(DEMO_TRAIN) --out $(DEMO)/runs/face-none
	@test -f $(DEMO)/runs/all-fc/metrics.json || $(FER) train $(STORE) -m face,pose,audio --fusion fc $(DEMO_TRAIN) --out $(DEMO)/runs/all-fc
	@test -f $(DEMO)/runs/all-transformer/metrics.json || $(FER) train $(STORE) -m face,pose,audio --fusion transformer $(DEMO_TRAIN) --out $(DEMO)/runs/all-transformer
	@echo "== 5/6 the comparison (the shape of the paper's Table 1); plots are in each run's plots/"
	$(FER) report $(DEMO)/runs
	@$(FER) report $(DEMO)/runs --markdown --out $(DEMO)/report.md > /dev/null
	@echo "== 6/6 label one clip with the fc run"
	$(FER) predict $(DEMO)/data/Clip/original/00001.mp4 --faces $(DEMO)/data/Clip/clip_224x224_16f/00001 --run $(DEMO)/runs/all-fc
	@echo "done: dataset $(DEMO)/data, store $(STORE), runs $(DEMO)/runs, table $(DEMO)/report.md"

TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/ruff check .  # lint first: the tree stays clean (rules in pyproject.toml)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile  # a module's tests stay in one process (its fixtures once)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO)
