"""
The client: one knock as a coroutine, and the drivers that run it.
"""
