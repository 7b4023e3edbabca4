"""What a person reads: the summary as tables (:mod:`.summary_tables`), the figures drawn (:mod:`.plots`,
matplotlib) and the self-contained HTML page of ``report --html`` and ``compare --html`` (:mod:`.html_page`).
"""
