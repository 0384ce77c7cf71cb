"""
The pure core: knock files, pool, handshakes, the tracker, configuration.

Nothing here does I/O or imports the reactor; time is given.
"""
