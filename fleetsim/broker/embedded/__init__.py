"""fleetsim's embedded broker: amqtt (:mod:`.amqtt_fixes`, :mod:`.subscriptions`, :mod:`.plugins`) behind its
own TLS front (:mod:`.broker`, :mod:`.tls_server`, :mod:`.tls_context`, :mod:`.crl`, :mod:`.stream`,
:mod:`.mqtt_wire`, :mod:`.auth`, :mod:`.cert_rules`, :mod:`.outbound`), run in a child process of its own
(:mod:`.process`, :mod:`.child`), its counters served over loopback HTTP (:mod:`.metrics`,
:mod:`.stats_http`)."""
