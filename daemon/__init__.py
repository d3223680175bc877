"""tolk's shared runtime: the bus and its messages, config, the service lifecycle, logging, the CLI."""
