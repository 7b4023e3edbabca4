"""Brokers that require client certificates: the embedded amqtt broker (default) and Mosquitto."""
