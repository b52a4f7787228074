# Shortcuts for the scripts in bin/ (the scripts are the source of truth).
.PHONY: setup run test ci
setup:
	bin/setup
run:
	bin/run
test:
	bin/test
ci:
	bash .ci/run
