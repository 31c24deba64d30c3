# The two commands of the README:
#   make demo   the demo rollout of the example programs
#   make test   every test (sanity, unit, integration on this kernel, the kernel matrix)
.PHONY: demo test unit integration sanity matrix bench examples

demo:
	scripts/demo.sh

test:
	scripts/test.sh

unit integration sanity matrix:
	scripts/test.sh $@

bench:
	scripts/bootstrap.sh && .venv/bin/python bench/run.py

examples:
	$(MAKE) -C examples
