# Thin wrappers: the README's commands work without make.
.PHONY: dev test bench lint
dev:
	python3 run.py dev
test:
	python3 run.py test
bench:
	python3 run.py bench
lint:
	.venv/bin/ruff check app consumers tests ops
