.PHONY: test demo info

# Installs everything the project needs into .venv and runs the tests (see scripts/test.sh).
test:
	./scripts/test.sh

# The whole method end to end on the embedded task (see README): writes oprd-demo/.
demo:
	./scripts/demo.sh

# Build facts of the compiled extension and the available backends.
info:
	.venv/bin/python -m oprd_kernels
