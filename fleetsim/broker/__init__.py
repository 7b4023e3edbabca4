"""Brokers that require client certificates, behind one face (:mod:`.handle`, :mod:`.launch`, :mod:`.pool`):
the embedded amqtt broker (default, :mod:`.embedded`) and Debian's Mosquitto (:mod:`.mosquitto`)."""
