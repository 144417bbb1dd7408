# The two front-door commands (see README):
#   make run   install everything, build the images, start libvirtd, serve the example zones
#   make test  install everything, build the images, start libvirtd, run the whole test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:5353
METRICS ?= 127.0.0.1:9153

.PHONY: install images native-images libvirt run test lint bench

install:
	./scripts/install.sh

# Both architectures' images for the tests; the host's own for `run` (the
# example zone's image=hello is the host's build, see README "ARM64 guests").
images: install
	@if [ -f images/Makefile ]; then $(MAKE) -C images all; fi

native-images: install
	@if [ -f images/Makefile ]; then $(MAKE) -C images $$(uname -m); fi

libvirt: install
	@if [ -x scripts/start-libvirt.sh ]; then ./scripts/start-libvirt.sh; fi

run: install native-images libvirt
	$(VENV)/bin/summoner check --zones zones
	$(VENV)/bin/summoner serve --zones zones --listen $(LISTEN) --metrics $(METRICS)

test: install images libvirt
	$(VENV)/bin/ruff check summoner tests bench
	$(PY) -m pytest -p no:cacheprovider

lint:
	$(VENV)/bin/ruff check summoner tests bench

bench: install
	$(PY) bench/dns_throughput.py
