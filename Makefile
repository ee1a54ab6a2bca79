# Convenience targets; the set-up-free entry point is ./nextpoi.sh (see README).
.PHONY: main test setup smoke results benchmark
main:
	./nextpoi.sh main
test:
	./nextpoi.sh test
setup:
	./nextpoi.sh setup
smoke:
	./nextpoi.sh setup && .venv/bin/nextpoi run parameters/smoke.yaml --overwrite
results:
	./nextpoi.sh results
benchmark:
	./nextpoi.sh setup && .venv/bin/python benchmarks/engine_speed.py --size ci
