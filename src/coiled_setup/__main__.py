from coiled_setup.cli import main

main()
