"""Mass-revocation rehearsals: whom to revoke, when the waves go and what the rows say (:mod:`.plan`, pure),
and driving those steps during a run (:mod:`.drive`)."""
