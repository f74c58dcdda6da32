"""Datasets, input validation and the per-DP-rank batch sampler of ``pretrain_gpt``.

megatron-core's wheel has no samplers (they live in Megatron-LM's ``megatron/training``), so
``micro_batches`` is a small deterministic one: global sample ``consumed + m*micro*dp + d*micro + j``
is row j of micro-batch m on data-parallel rank d. It is a pure function of the consumed-sample
count, so resuming from a checkpoint's count replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

import numpy
import torch

from megatron_rw.data.domains import domain_name
from megatron_rw.data.gpt import build_gpt_datasets, gpt_dataset_config
from megatron_rw.data.tokenizer import SentencePieceTokenizer
from megatron_rw.training.arguments import ArgumentError

Blend = Tuple[List[str], Optional[List[float]]]


def parse_blend_flag(words: Optional[List[str]], flag: str) -> Optional[Blend]:
    """Megatron's blend list: ``[prefix]`` or ``[w1, p1, w2, p2, ...]`` -> ``(prefixes, weights)``."""
    if not words:
        return None
    if len(words) == 1:
        return [words[0]], None
    if len(words) % 2:
        raise ArgumentError(f"{flag}: expected one prefix or 'weight prefix' pairs, got {words}")
    try:
        weights = [float(w) for w in words[0::2]]
    except ValueError:
        raise ArgumentError(f"{flag}: weights must be numbers, got {words[0::2]}") from None
    return list(words[1::2]), weights


def _manifest_sha(prefix: str) -> Optional[Tuple[str, str]]:
    """(path, tokenizer sha256) of the ``manifest.json`` that ``megatron_rw.data.prepare`` wrote
    next to the ``megatron/`` folder holding ``prefix``, if there is one."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(prefix))), "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        sha = json.load(f).get("tokenizer", {}).get("sha256")
    return (path, sha) if sha else None


def check_data(blends: Dict[str, Optional[Blend]], tokenizer: SentencePieceTokenizer) -> None:
    """Fail before training: missing files, token ids the tokenizer cannot have produced, or a
    corpus manifest naming another tokenizer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    for flag, blend in blends.items():
        if blend is None:
            continue
        for prefix in blend[0]:
            for ext in (".bin", ".idx"):
                if not os.path.isfile(prefix + ext):
                    raise ArgumentError(f"{flag}: {prefix + ext} does not exist")
            dtype = IndexedDataset(prefix).index.dtype
            tokens = numpy.memmap(prefix + ".bin", dtype=dtype, mode="r")
            top = int(tokens.max()) if tokens.size else -1
            if top >= tokenizer.vocab_size:
                raise ArgumentError(
                    f"{flag}: {prefix} holds token id {top}, but --tokenizer-model "
                    f"{tokenizer.model_path} has only {tokenizer.vocab_size} ids")
            found = _manifest_sha(prefix)
            if found and found[1] != tokenizer.sha256:
                raise ArgumentError(
                    f"{flag}: {prefix} was tokenized with another tokenizer than --tokenizer-model "
                    f"{tokenizer.model_path} (sha256 differs from {found[0]})")


def train_domains(args) -> List[str]:
    """Names of the training blend's members in ``dataset_id`` order; [] for a single prefix."""
    blends = data_blends(args)
    blend = blends.get("--data-path") or blends.get("--train-data-path")
    return [domain_name(p) for p in blend[0]] if blend and len(blend[0]) > 1 else []


def data_blends(args) -> Dict[str, Optional[Blend]]:
    if args.data_path is not None:
        return {"--data-path": parse_blend_flag(args.data_path, "--data-path")}
    return {"--train-data-path": parse_blend_flag(args.train_data_path, "--train-data-path"),
            "--valid-data-path": parse_blend_flag(args.valid_data_path, "--valid-data-path")}


def _config(args, tokenizer, blend_per_split=None, blend=None):
    kwargs = dict(random_seed=args.seed, sequence_length=args.seq_length,
                  path_to_cache=args.data_cache_path, tokenizer=tokenizer,
                  reset_position_ids=args.reset_position_ids,
                  reset_attention_mask=args.reset_attention_mask,
                  eod_mask_loss=args.eod_mask_loss, create_attention_mask=False)
    if blend is None:
        return gpt_dataset_config(blend_per_split=blend_per_split, **_rename(kwargs))
    # --data-path + --split: one blend cut into train/valid/test by megatron-core.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    return GPTDatasetConfig(blend=blend, split=args.split, **kwargs)


def _rename(kwargs):
    """GPTDatasetConfig's field names -> ``gpt_dataset_config``'s parameter names."""
    k = dict(kwargs)
    k.pop("create_attention_mask")
    k["seed"], k["seq_length"] = k.pop("random_seed"), k.pop("sequence_length")
    return k


def build_datasets(args, tokenizer):
    """``(train, {name: valid})``: the valid dict has ``"all"`` (the whole valid blend) and, for a
    blend of several prefixes, one entry per prefix named by :func:`domain_name`."""
    blends = data_blends(args)
    n_train = args.train_iters * args.global_batch_size
    n_valid = args.eval_iters * args.global_batch_size
    if args.data_path is not None:
        blend = blends["--data-path"]
        make = lambda b, sizes: build_gpt_datasets(_config(args, tokenizer, blend=b), sizes)
    else:
        blend = blends["--valid-data-path"]
        make = lambda b, sizes: build_gpt_datasets(
            _config(args, tokenizer, blend_per_split=[blends["--train-data-path"] if sizes[0] else None,
                                                      b, None]), sizes)
    # megatron-core wants a size (not None) for every split a weighted blend covers.
    train, valid, _ = make(blend, [n_train, n_valid if blend else None, 0])
    valids = {}
    if valid is not None and n_valid > 0:
        valids["all"] = valid
        if len(blend[0]) > 1:
            for prefix in blend[0]:
                valids[domain_name(prefix)] = make(([prefix], None), [0, n_valid, 0])[1]
    return train, valids


def _collate(rows: List[dict]) -> Dict[str, torch.Tensor]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = (torch.stack(values) if isinstance(values[0], torch.Tensor)
                    else torch.as_tensor(numpy.asarray(values)))
    return out


def micro_batches(dataset, consumed: int, num_micro: int, micro: int, dp_rank: int,
                  dp_size: int) -> Iterator[Dict[str, torch.Tensor]]:
    """This DP rank's rows of each of the next ``num_micro`` global micro-batches.

    Global micro-batch m holds samples ``[consumed + m*micro*dp, ... + micro*dp)``; DP rank d takes
    the contiguous block ``d*micro .. (d+1)*micro`` of it, the layout the reweighting gather expects
    (rank order in the DP group = row order of the global micro-batch). Indices wrap around the
    dataset (megatron-core sizes it to the requested sample count, so this only happens in eval).
    """
    for m in range(num_micro):
        start = consumed + m * micro * dp_size + dp_rank * micro
        yield _collate([dataset[(start + j) % len(dataset)] for j in range(micro)])
