"""
The daemon: the coordinator, the central and pool ports, actions, audit.
"""
