"""
The operator's side: the knocker command, client administration, the demo.
"""
