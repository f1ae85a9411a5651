from coiled_setup.cli import entry

entry()
