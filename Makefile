.PHONY: test info

# Installs everything the project needs into .venv and runs the tests (see scripts/test.sh).
test:
	./scripts/test.sh

# Build facts of the compiled extension and the available backends.
info:
	.venv/bin/python -m oprd_kernels
