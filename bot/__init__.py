"""The outside of kbot: the ``kbot`` command line, chat adapters and the HTTP server."""
