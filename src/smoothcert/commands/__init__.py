"""CLI subcommands, one module each (see ``smoothcert.cli``)."""
