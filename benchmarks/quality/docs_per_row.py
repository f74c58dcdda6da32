"""How many documents a packed training row holds, per domain and for the blend, at several lengths.

    python -m benchmarks.quality.docs_per_row [--data data/small data/small_noisy] [--seq 128 512 1024]

``--sample-reweight-unit document`` makes each document segment of a row its own unit; it only
differs from ``sample`` when rows hold several documents. This counts them the way GPTDataset
builds rows: documents shuffled and concatenated (each ends with EOD), cut into samples of
``seq + 1`` tokens with stride ``seq``; the labels are the last ``seq`` tokens of a sample and a
unit ends at every label that is EOD (plus the open segment at the row's end). Only the
documents' lengths are read (from the ``.idx`` files), so this takes seconds.

Per domain it reports the mean, median, maximum and share of rows with >= 2 units, simulated over one
shuffled pass of the domain; the blend's mean weights each domain by its share of the training
blend (= its share of the rows). It also prints the closed form ``seq * p + 1 - p`` (p = documents
per token), which the simulation should match. Writes ``results/docs_per_row.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

import numpy

from benchmarks.quality.gpt_sweep_report import blend_shares
from megatron_rw.data.indexed import read_indexed_dataset


def train_prefixes(manifest: str) -> Dict[str, str]:
    """Domain name -> indexed-dataset prefix of its training split, from a corpus manifest."""
    with open(manifest, encoding="utf-8") as f:
        words = json.load(f)["data_path"]["train"].split()
    return {os.path.basename(p).removesuffix("_train"): p for p in words[1::2]}


def units_per_row(lengths: numpy.ndarray, seq: int, seed: int = 0) -> numpy.ndarray:
    """Units (document segments) in each row of one shuffled pass over documents of ``lengths``."""
    order = numpy.random.default_rng(seed).permutation(len(lengths))
    eod = numpy.cumsum(lengths[order]) - 1  # stream positions of the EOD tokens
    rows = (int(eod[-1]) + 1 - 1) // seq  # samples of seq + 1 tokens with stride seq
    if rows == 0:
        return numpy.zeros(0, dtype=numpy.int64)
    first = numpy.arange(rows) * seq + 1  # labels of row k: stream positions first .. first+seq-1
    ends = numpy.searchsorted(eod, first + seq) - numpy.searchsorted(eod, first)
    last_is_eod = numpy.isin(first + seq - 1, eod)
    return ends + (~last_is_eod).astype(numpy.int64)


def measure(manifest: str, seqs: List[int]) -> dict:
    """Per domain and for the blend: documents per row at each sequence length."""
    shares = blend_shares(manifest)
    out = {"manifest": manifest, "blend_shares": shares, "domains": {}, "blend": {}}
    for domain, prefix in sorted(train_prefixes(manifest).items()):
        ds = read_indexed_dataset(prefix)  # keep it open: its lengths are a view of its mmap
        lengths = numpy.array(ds.sequence_lengths, dtype=numpy.int64)  # a copy
        del ds
        p = len(lengths) / int(lengths.sum())
        entry = {"documents": len(lengths), "tokens": int(lengths.sum()),
                 "mean_doc_tokens": float(lengths.mean()),
                 "median_doc_tokens": float(numpy.median(lengths)), "seq": {}}
        for s in seqs:
            u = units_per_row(lengths, s)
            entry["seq"][str(s)] = {"mean": float(u.mean()), "median": float(numpy.median(u)),
                                    "max": int(u.max()),  # vs --sample-reweight-max-documents
                                    "share_rows_2plus": float((u >= 2).mean()),
                                    "closed_form": s * p + 1 - p, "rows": int(len(u))}
        out["domains"][domain] = entry
    for s in seqs:
        out["blend"][str(s)] = {
            k: sum(shares[d] * out["domains"][d]["seq"][str(s)][k] for d in shares)
            for k in ("mean", "share_rows_2plus")}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["data/small", "data/small_noisy"])
    p.add_argument("--seq", nargs="+", type=int, default=[128, 256, 512, 1024])
    p.add_argument("--out", default="results/docs_per_row.json")
    a = p.parse_args(argv)
    report = {"seq_lengths": a.seq, "corpora": {}}
    for data in a.data:
        r = measure(os.path.join(data, "manifest.json"), a.seq)
        report["corpora"][os.path.basename(os.path.normpath(data))] = r
        print(f"{data}: units (documents) per row, mean / share of rows with >= 2")
        print(f"  {'domain':14s} {'doc tokens':>10s} " +
              " ".join(f"{'seq ' + str(s):>16s}" for s in a.seq))
        for d, e in r["domains"].items():
            print(f"  {d:14s} {e['mean_doc_tokens']:10.0f} " + " ".join(
                f"{e['seq'][str(s)]['mean']:7.2f} / {e['seq'][str(s)]['share_rows_2plus']:5.2f}"
                for s in a.seq))
        print(f"  {'blend':14s} {'':10s} " + " ".join(
            f"{r['blend'][str(s)]['mean']:7.2f} / {r['blend'][str(s)]['share_rows_2plus']:5.2f}"
            for s in a.seq))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
