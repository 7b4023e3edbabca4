"""Debian's Mosquitto 2.0 as a mutual-TLS broker over a fleetsim PKI: its configuration as text
(:mod:`.config`, pure) and the process started and supervised (:mod:`.broker`)."""
