"""Tokenizer -> indexed dataset -> megatron-core IndexedDataset and GPTDataset, on real text."""

import numpy
import pytest

from megatron_rw.data.gpt import build_gpt_datasets, gpt_dataset_config, parse_blend
from megatron_rw.data.indexed import read_indexed_dataset, token_dtype, write_indexed_dataset
from megatron_rw.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from tests.data.stdlib_text import stdlib_docstrings


@pytest.fixture(scope="module")
def corpus():
    return stdlib_docstrings()


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    model = tmp_path_factory.mktemp("tok") / "tiny.model"
    train_sentencepiece(corpus[::2], model, vocab_size=600, num_threads=2)
    return SentencePieceTokenizer(model)


def test_tokenizer_adapter(tokenizer, corpus):
    assert tokenizer.vocab_size == 600
    assert tokenizer.eod == tokenizer.eos == 2 and tokenizer.bos == 1
    assert tokenizer.inv_vocab[3] == "\n"
    assert tokenizer.unique_identifiers["class"] == "SentencePieceTokenizer"
    assert not hasattr(tokenizer, "pad")  # megatron-core then pads with -1, never a real id
    text = corpus[1] + "\n\tindented  twice → ünïcode ✓"
    ids = tokenizer.tokenize(text)
    assert tokenizer.detokenize(ids) == text  # whitespace, newlines and rare characters survive
    assert tokenizer.detokenize(ids + [tokenizer.eod]) == text
    assert tokenizer.tokenize_batch([text, "x"]) == [ids, tokenizer.tokenize("x")]


def test_indexed_round_trip(tokenizer, corpus, tmp_path):
    docs = corpus[1::2][:40]
    prefix = tmp_path / "docs_train"
    stats = write_indexed_dataset(prefix, iter(docs), tokenizer, batch_size=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs_train.bin", "docs_train.idx"]
    ds = read_indexed_dataset(prefix)
    assert len(ds) == len(docs) == stats["documents"]
    assert ds.index.dtype == token_dtype(600) == numpy.uint16
    assert int(ds.sequence_lengths.sum()) == stats["tokens"]
    assert stats["bytes"] == sum(len(d.encode()) for d in docs)
    for i, doc in enumerate(docs):
        tokens = ds[i].tolist()
        assert tokens == tokenizer.tokenize(doc) + [tokenizer.eod]
        assert tokenizer.detokenize(tokens) == doc


def test_gpt_dataset_blend(tokenizer, corpus, tmp_path):
    prefixes = []
    for name, docs in (("a", corpus[:60]), ("b", corpus[60:120])):
        write_indexed_dataset(tmp_path / name, docs, tokenizer)
        prefixes.append(str(tmp_path / name))
    blend = parse_blend(f"0.75 {prefixes[0]} 0.25 {prefixes[1]}")
    assert blend == (prefixes, [0.75, 0.25])
    config = gpt_dataset_config(tokenizer, seq_length=64, blend_per_split=[blend, blend, None],
                                seed=7, eod_mask_loss=False)
    train, valid, test = build_gpt_datasets(config, [200, 20, 0])
    assert test is None and len(train) >= 200 and len(valid) >= 20  # blends may round up
    ids = []
    for i in range(len(train)):
        sample = train[i]
        assert sample["tokens"].shape == (64,) and sample["labels"].shape == (64,)
        assert bool((sample["tokens"][1:] == sample["labels"][:-1]).all())  # labels are shifted tokens
        assert int(sample["tokens"].max()) < tokenizer.vocab_size
        assert float(sample["loss_mask"].min()) == 1.0  # no padding, eod_mask_loss=False
        ids.append(int(sample["dataset_id"]))
    share_a = ids.count(0) / len(ids)
    assert share_a == pytest.approx(0.75, abs=0.05)  # blend weights honoured, per-domain ids present
    eods = sum(int((train[i]["tokens"] == tokenizer.eod).sum()) for i in range(len(train)))
    assert eods > 0  # document boundaries travel with the packed rows
