"""
The operator's side of a running daemon (docs/spec.md section 12, docs/console.md):
the web console, its API and /metrics, and the reports.  Nothing here is
imported by the knock path; the daemon loads it only when C{admin} is set.
"""
