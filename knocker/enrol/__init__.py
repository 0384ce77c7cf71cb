"""
Enrolment (docs/spec.md section 10): invitation codes, the SPAKE2 exchange
that hands a client its portknock file.  Nothing on the plain knock's path
imports this package.
"""
