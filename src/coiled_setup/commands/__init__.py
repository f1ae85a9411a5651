"""One module per command; cli.py parses and delegates."""
