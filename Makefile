# The two commands of the README:
#   make demo   the demo rollout of the example programs
#   make test   every test (sanity, unit, integration on this kernel, newer ansible-core, the kernel matrix)
.PHONY: demo test unit integration sanity core matrix bench examples

demo:
	scripts/demo.sh

test:
	scripts/test.sh

unit integration sanity core matrix:
	scripts/test.sh $@

bench:
	scripts/bootstrap.sh && .venv/bin/python bench/run.py

examples:
	$(MAKE) -C examples
