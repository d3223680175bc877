"""One module or package per tolk process. Services meet only on the bus (see daemon.bus)."""
