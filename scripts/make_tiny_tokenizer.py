#!/usr/bin/env python3
"""Train the tiny LLaMA-layout BPE tokenizer used with the tiny LLaVA fixtures.

Described in fixtures/README.md.

Needs only the `tokenizers` PyPI package (no torch):

    pip install tokenizers==0.23.3
    python scripts/make_tiny_tokenizer.py            # from the repository root

Pinned versions (the output was produced with exactly these):
    python      3.11.7   (the training corpus is CPython's own stdlib docstrings,
                          so the result depends on the CPython version)
    tokenizers  0.23.3

Layout (vocab 1000):
    0 <unk>, 1 <s>, 2 </s>            special added tokens
    3..258   <0x00>..<0xFF>           byte-fallback tokens: in the BPE vocab but NOT added tokens
    259..358 alphabet: the 100 most frequent characters of the normalised corpus (ties by code point)
    359..997 639 learned merges
    998 <pad>, 999 <image>            special added tokens
Normaliser Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer, BPE with byte_fallback and
fuse_unk, TemplateProcessing post-processor (single "<s> $A", pair "<s> $A <s> $B"), decoder
Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)], i.e. the LLaMA tokenizer.json layout.

Training corpus: the docstrings (module, class, function; `ast.get_docstring`, `ast.walk` order) of the
top-level `*.py` files of the CPython standard library, sorted by file name (3,925 docstrings,
893,589 characters with CPython 3.11.7). During training a pre-tokenizer splitting on "▁"
(merged with the next piece) is used for speed; it is removed from the saved tokenizer.

Outputs (committed; not regenerated in CI):
    fixtures/tiny_tokenizer/tokenizer.json
    fixtures/tiny_tokenizer/tokenizer_config.json
    fixtures/tiny_tokenizer/expected.json   [{"text", "ids" (add_special_tokens=True), "tokens",
                                             "decoded" (skip_special_tokens=True),
                                             "decoded_with_special" (skip_special_tokens=False)}]
"""

import ast
import json
import os
import sys
import sysconfig

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

EXPECTED_TEXTS = [
    "Hello world!",
    "USER: <image>\nWhat is shown in this image? ASSISTANT:",
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: <image>\nDescribe the picture. ASSISTANT:",
    "<|im_start|>user\nhi<|im_end|>",
    "Ünïcödé and emoji 🙂 fall back to bytes",
    "  leading spaces\tand tabs",
    "Hello, my dog is cute",
    "",
    "<s>literal specials</s> and <pad><image><image>",
    "Return the number of items in a container.\n\n    Indented line.",
]

PINNED_PYTHON = "3.11.7"
PINNED_TOKENIZERS = "0.23.3"

VOCAB_SIZE = 1000
PAD_ID, IMAGE_ID = 998, 999
ALPHABET_SIZE = 100
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "fixtures", "tiny_tokenizer")


def check_versions():
    py = "%d.%d.%d" % sys.version_info[:3]
    assert tokenizers.__version__ == PINNED_TOKENIZERS, f"tokenizers {tokenizers.__version__} != {PINNED_TOKENIZERS}"
    assert py == PINNED_PYTHON, f"python {py} != {PINNED_PYTHON} (the corpus is CPython's docstrings)"


def corpus():
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in os.listdir(root) if f.endswith(".py"))
    docs = []
    for f in files:
        try:
            with open(os.path.join(root, f), encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
        except Exception:  # pragma: no cover - a stdlib file that does not parse
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d:
                    docs.append(d)
    return docs


def build():
    docs = corpus()
    print(f"corpus: {len(docs)} docstrings, {sum(map(len, docs))} chars")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # training-only pre-tokenizer (speed); removed below
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    # Alphabet: the 100 most frequent characters of the normalised corpus, ties broken by code point.
    # (Passing only limit_alphabet=100 lets the trainer break count ties arbitrarily: not reproducible.)
    counts = {}
    for d in docs:
        for ch in "▁" + d.replace(" ", "▁"):
            counts[ch] = counts.get(ch, 0) + 1
    alphabet = [ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], ord(kv[0])))[:ALPHABET_SIZE]]
    trainer = trainers.BpeTrainer(
        vocab_size=PAD_ID,  # ids 0..997
        special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
        initial_alphabet=alphabet,
        limit_alphabet=ALPHABET_SIZE,
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))

    j = json.loads(tok.to_str())
    # LLaMA layout: no pre-tokenizer
    j["pre_tokenizer"] = None
    # byte tokens stay in the BPE vocab but must not be added tokens (decode would drop them)
    j["added_tokens"] = [t for t in j["added_tokens"] if t["content"] in ("<unk>", "<s>", "</s>")]
    for t in j["added_tokens"]:
        t.update(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    m = j["model"]
    m.update(dropout=None, unk_token="<unk>", continuing_subword_prefix=None, end_of_word_suffix=None,
             fuse_unk=True, byte_fallback=True, ignore_merges=False)
    vocab = m["vocab"]
    assert len(vocab) == PAD_ID, len(vocab)
    assert sorted(vocab.values()) == list(range(PAD_ID))
    assert [vocab["<unk>"], vocab["<s>"], vocab["</s>"]] == [0, 1, 2]
    for b, t in enumerate(byte_tokens):
        assert vocab[t] == 3 + b, (t, vocab[t])

    tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens(["<pad>", "<image>"])
    assert tok.token_to_id("<pad>") == PAD_ID and tok.token_to_id("<image>") == IMAGE_ID
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0",
        pair="<s>:0 $A:0 <s>:1 $B:1",
        special_tokens=[("<s>", 1)],
    )
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    return tok


def main():
    check_versions()
    tok = build()
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, "tokenizer.json")
    tok.save(path, pretty=True)
    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 128,
        "tokenizer_class": "LlamaTokenizerFast",
    }
    with open(os.path.join(OUT_DIR, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    # sanity: byte tokens are not added tokens; decode round-trips through byte fallback
    tok = Tokenizer.from_file(path)
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    assert added == {"<unk>", "<s>", "</s>", "<pad>", "<image>"}, added
    s = "Ünïcödé 🙂"
    assert tok.decode(tok.encode(s).ids) == s
    print(f"wrote {path} ({os.path.getsize(path)} B)")
    expected = []
    for text in EXPECTED_TEXTS:
        enc = tok.encode(text, add_special_tokens=True)
        expected.append({
            "text": text,
            "ids": enc.ids,
            "tokens": enc.tokens,
            "decoded": tok.decode(enc.ids, skip_special_tokens=True),
            "decoded_with_special": tok.decode(enc.ids, skip_special_tokens=False),
        })
    with open(os.path.join(OUT_DIR, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for e in expected:
        print(repr(e["text"][:40]), e["ids"][:12], "..." if len(e["ids"]) > 12 else "", repr(e["decoded"][:40]))


if __name__ == "__main__":
    main()
