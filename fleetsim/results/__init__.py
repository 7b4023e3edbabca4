"""What a run measured: its raw rows merged (:mod:`.rows`), the timeline (:mod:`.series`) and the summary
(:mod:`.summary`) computed from them, ``--fail-on`` rules (:mod:`.thresholds`), the results directory written
(:mod:`.files`) and read back (:mod:`.read`), what each figure shows (:mod:`.figure_data`) and what differs
between runs (:mod:`.compare`). Pure apart from :mod:`.files` and :mod:`.read`."""
