from edgetl.cli import run

run()
