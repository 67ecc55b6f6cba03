# Two commands: `make lab` opens the course, `make test` runs every test.
# Both create ./.venv and install minilopt (editable, with the course extras) first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.minilopt-installed
# Every test: unit tests, nbval over the lessons and the solutions, exercises in sync.
TESTS  := tests notebooks solutions

.PHONY: lab test setup exercises clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable ".[course]"
	@touch $(STAMP)

setup: $(STAMP)

# Jupyter refuses to run as root (as in containers) unless told to.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

# The server's root is the repository, so notebooks/, exercises/ and solutions/ are all in the
# file browser; it opens on the lesson map. No news pop-up and no update check: a workshop
# room needs neither (and may be offline). Your own Jupyter config is left as it is.
LAB_FLAGS := --ServerApp.root_dir="$(CURDIR)" --LabApp.news_url=None \
             --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) $(LAB_FLAGS) notebooks/00_lesson_map.ipynb

# Two workers, one file each at a time (a notebook's cells share a kernel); the slowest files
# start first (tests/conftest.py), in place of xdist's order by test count, so the workers
# finish together.
test: $(STAMP)
	$(BIN)/python -m pytest $(TESTS) --nbval-lax -n 2 --dist loadfile --no-loadscope-reorder

exercises: $(STAMP)
	$(BIN)/python -m minilopt.exercises

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
