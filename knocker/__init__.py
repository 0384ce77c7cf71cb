"""
knocker: port knocking with one-time knocks, an HMAC handshake on a central
port and a pool of decoy ports, on Twisted.
"""

__version__ = "0.1.0"


def command_line() -> None:
    """
    The C{knocker} command (bin/knocker), here rather than in the script so
    that it is read from a cached C{.pyc}: a script is compiled on every
    run, and compiling this took 0.3-0.5 ms of every knock.

    C{knock} and C{connect} go straight to their modules (L{knocker.main},
    which dispatches everything else, is one import more) and leave without
    tearing the interpreter down.
    """
    import gc
    import sys

    # A knock allocates enough while it imports and talks to set the cycle
    # collector off (twice, 0.15-0.25 ms in all, measured here) and frees
    # nothing that way: what it makes lives until the process ends,
    # milliseconds later.  So the collector is off for `knock`, and for
    # `connect` until its knock is done (the relay that follows may run for
    # hours, and turns it back on).
    gc.disable()
    command = sys.argv[1:2]
    if command == ["knock"]:
        from knocker.client.command import knock_command as run
    elif command == ["connect"]:
        from knocker.client.connect import connect_command as run
    else:
        gc.enable()
        from knocker.main import main

        sys.exit(main())
    try:
        status = run(sys.argv[2:])
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback (connect has its own)
        print(f"knocker {command[0]}: interrupted", file=sys.stderr)
        status = 130
    # A knock has written everything it writes with os.write or closed it;
    # tearing the interpreter down would cost every knock about 2 ms more.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started with that descriptor closed
            stream.flush()
    import os

    os._exit(status)
