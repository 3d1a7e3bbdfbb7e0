# Convenience wrappers around scripts/dev.sh.
.PHONY: run test build deps clean
run:
	bash scripts/dev.sh run
test:
	bash scripts/dev.sh test
build:
	bash scripts/dev.sh build
deps:
	bash scripts/dev.sh deps
clean:
	rm -rf build
