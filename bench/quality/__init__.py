"""The selection-quality experiment: does a core set picked by activation coverage train a better model?

One module per stage, the same data flow as the product:

- ``corpus``: the Alpaca pool and a held-out slice disjoint from it, the evaluation sets, and
  rendering/tokenising a (prompt, response) pair exactly as training and scoring both see it.
- ``arms``: who picks the training subset (``mads`` and its variants through ``mads_fast.select``,
  ``random`` seeds, ``text`` = facility location on MiniLM sentence embeddings, ``longest``, ``full``).
- ``train``: full fine-tuning of the target model on one arm, with a token-budgeted step plan that is
  identical for every arm given its examples (equal example count, or equal training tokens).
- ``score``: per-item scores (response NLL, MMLU choice log-likelihood accuracy) and bootstrap intervals.
- ``summary``: the results JSONL, the Markdown table and the plot.

``bench/bench_quality.py`` is the command line; every arm trains in its own process.
"""
