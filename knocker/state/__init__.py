"""
The server's durable state: the store interface, its backends, the
server's copies of portknock files.
"""
