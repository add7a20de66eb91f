"""`python -m pipeline`: the `pipeline` command, for launchers that start it by interpreter."""

from pipeline.cli import main

main(prog_name="pipeline")
