"""One run: the orchestration (:mod:`.orchestrate`: PKI, broker, workers, timed events, the results directory)
and what it uses: the brokers it starts or names and how devices authenticate to them (:mod:`.brokers`), the
fleet's identities (:mod:`.provision`), dealing it into shards (:mod:`.shards`), where the shards run
(:mod:`.executors`, :mod:`.placement`), timed events (:mod:`.events`), the open-files limits
(:mod:`.open_files`), CPU samples (:mod:`.samples`) and live progress (:mod:`.progress`,
:mod:`.live_metrics`)."""
