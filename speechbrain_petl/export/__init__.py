"""Leaving our stack: a finished run as an inference folder, a merged transformers model, or a PEFT adapter.

* :mod:`~speechbrain_petl.export.cli`: ``python -m speechbrain_petl.export``
  and :func:`export_run`;
* :mod:`~speechbrain_petl.export.merged`: methods folded into the weights of
  transformers' classification model;
* :mod:`~speechbrain_petl.export.peft`: a LoRA as a PEFT adapter, and back.
"""
