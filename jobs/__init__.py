"""Entry points: ``python -m jobs.<name>``. Each is thin: ``jobs._cli`` parses its flags into a
config, sets up logging and applies the error policy; platform code does the work."""
