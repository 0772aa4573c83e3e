# Everything runs from a local virtual environment that these targets create.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/demo

.PHONY: install demo test test-ray-min lint bench pretrained clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned first: an unpinned torch pulls a multi-GB CUDA build. On a GPU
# machine install the CUDA build you want before `pip install -e .`.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,corpus,rnnoise,reverb,onnx]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/speech-enhance demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

# The suite on the oldest Ray the project supports (pyproject.toml's lower bound), in its
# own virtual environment; CI runs `make test` on the newest.
RAY_MIN ?= 2.58.1
RAY_MIN_VENV ?= .venv-ray-min
test-ray-min:
	$(PYTHON) -m venv $(RAY_MIN_VENV)
	$(RAY_MIN_VENV)/bin/pip install -q --upgrade pip
	$(RAY_MIN_VENV)/bin/pip install -q torch==2.13.0
	$(RAY_MIN_VENV)/bin/pip install -q -e '.[dev,corpus,rnnoise,reverb,onnx]' 'ray[default,data,train,tune]==$(RAY_MIN)'
	$(RAY_MIN_VENV)/bin/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/build_throughput.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/rtf.py

# The shipped model (speech_enhance/pretrained, MODEL_CARD.md) rebuilt from the shared
# recordings: the recipe of README "Training a model that generalises" as a final fit (the
# validation noise trains too; the test noise stays unseen), about an hour on 2 CPUs.
SHARED ?= ../shared/data
PRETRAINED ?= runs/pretrained
# bf16 only where the CPU computes it (AMX, AVX512-BF16, Arm BF16): elsewhere it is emulated,
# several times slower than fp32, and the time limit would end training after an epoch or two.
# train's own check decides (expanded when the recipe runs, after install).
PRECISION ?= $(shell $(BIN)/python -c "from speech_enhance.model.train import cpu_has_bf16; \
	print('bf16' if cpu_has_bf16() else 'fp32')")
pretrained: install
	$(BIN)/speech-enhance build --clean $(SHARED)/dev/speech $(SHARED)/extra/speech --noise $(SHARED)/dev/noise \
	    --out $(PRETRAINED)/data --mixtures-per-clean 16 --snr-range -5 15 --simulate-rooms 0.2 --mic-eq 0.3 \
	    --clip 0.02 --noise-transforms 0.5 --synthetic-noise 0.5 --dtype float16 --train-on-val-noise
	$(BIN)/speech-enhance train --data $(PRETRAINED)/data --out $(PRETRAINED)/crn --arch crn \
	    --loss cmag_asym_sisdr_stoi --loss-option sisdr_weight=0.004 --loss-option stoi_weight=0.3 \
	    --loss-option over_suppression=1 --sequence 4 --model-option mean_norm_s=0.5 --model-option fullres=8 \
	    --model-option level_db=-20 --model-option band_gru=32 \
	    --workers 2 --epochs 7 --step-size 1 --gamma 0.6 --time-limit 50 --precision $(PRECISION) --compile
	$(BIN)/speech-enhance build --clean $(SHARED)/dev/speech $(SHARED)/extra/speech --noise $(SHARED)/dev/noise \
	    --out $(PRETRAINED)/test --noises-per-clean 2 --dtype float16
	$(BIN)/speech-enhance evaluate --data $(PRETRAINED)/test --model $(PRETRAINED)/crn/cnn_enhancer_best.pth \
	    --out $(PRETRAINED)/report --max-mixtures 0
	cp $(PRETRAINED)/crn/cnn_enhancer_best.pth speech_enhance/pretrained/crn_v9.pth

clean:
	rm -rf $(VENV) $(RAY_MIN_VENV) runs corpus data .pytest_cache
