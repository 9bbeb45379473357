"""Entry points: ``python -m jobs.<name>``. Each is thin: ``ankh_platform.core.cli`` parses its flags into a
config, sets up logging and applies the error policy; platform code does the work."""
